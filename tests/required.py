"""The one rule for a test whose server or client is missing: skip, saying how to get it; but under
PROXY_E2E_REQUIRED=1 (CI, which installs everything) a missing piece is a failure, never a quiet skip."""

import os
from typing import NoReturn

import pytest

REQUIRED = os.environ.get("PROXY_E2E_REQUIRED") == "1"


def unavailable(reason: str) -> NoReturn:
    if REQUIRED:
        pytest.fail(f"PROXY_E2E_REQUIRED=1 but {reason}", pytrace=False)
    pytest.skip(reason)
