"""A Locust load test of the golden path: each simulated user runs stagewatch's `golden-path` probe in a loop, and
Locust's stats show one row per stage (HTTP health/auth, WS connect … response) and one per close code.

    stagewatch sandbox --port 8765 &                 # or any server speaking the protocol
    locust -f examples/locustfile.py --headless -u 200 -r 50 -t 30s --host http://127.0.0.1:8765

The probe, the protocol and the token come from the stagewatch config (--config / $STAGEWATCH_CONFIG /
./config.yaml / the packaged one); against a standalone sandbox on this machine the key is found by itself.
"""

from locust import between

from probes.locust import StagewatchUser


class GoldenPath(StagewatchUser):
    probe = "golden-path"
    wait_time = between(0.5, 1.5)  # a user opens the app about once a second
