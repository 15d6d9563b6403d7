"""Fixtures of the staging e2e suite: a fresh JWT for the staging test user and the ways it travels."""

from __future__ import annotations

import os

import pytest

from e2e_helpers import mint_token, subprotocol_for


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    secret = os.environ.get("JWT_SECRET_KEY")
    if not secret:
        pytest.skip("JWT_SECRET_KEY is not set (stagewatch sets it for its sandbox)")
    return secret


@pytest.fixture
def token(jwt_secret: str) -> str:
    return mint_token(jwt_secret)


@pytest.fixture
def auth_subprotocol(token: str) -> str:
    return subprotocol_for(token)


@pytest.fixture
def auth_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-E2E-Test": "true"}
