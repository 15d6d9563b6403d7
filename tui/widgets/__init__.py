"""The panes of the stagewatch screen, one module per screen area."""
