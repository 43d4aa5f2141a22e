"""Whether the Hugging Face hub can be reached: decided once per process, in seconds, in one place.

Every consumer of the hub (named corpora, zero-shot tasks, the model zoo, hub model ids and tokenizers) asks
:func:`hub_status` before it touches the network. Without the decision each library finds out for itself,
with retries and back-off per dataset, which on a machine without the hub cost minutes before the local copy
was tried.

The decision:

- ``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` set to a true value: unreachable,
  without a probe (the hub's own switches keep working).
- Otherwise one HEAD request to ``$HF_ENDPOINT`` (default ``https://huggingface.co``) with a timeout of
  ``$PRUNELIGHT_HUB_TIMEOUT`` seconds (default 3). Any HTTP answer below 500 means reachable; a refused or
  silent connection, a DNS failure or a server error means unreachable.

When the hub is unreachable, the hub libraries are put in offline mode for the rest of the process and its
children (the environment variables, and the constants ``huggingface_hub`` and ``datasets`` read them into at
import), so none of them retries either: ``from_pretrained`` of a hub id uses the local Hugging Face cache,
and every named corpus and zero-shot task is read from the data root.
"""

from __future__ import annotations

import logging
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass

log = logging.getLogger(__name__)

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
TIMEOUT_VARIABLE = "PRUNELIGHT_HUB_TIMEOUT"
DEFAULT_TIMEOUT = 3.0
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class HubStatus:
    """The decision and why, for messages and reports (``"the hub is not reachable (<why>)"``)."""

    reachable: bool
    endpoint: str
    reason: str

    def describe(self) -> str:
        if self.reachable:
            return f"the hub ({self.endpoint}) is reachable"
        return f"the hub is not reachable ({self.reason})"


_status: HubStatus | None = None


def hub_status() -> HubStatus:
    """The process-wide decision, probed on the first call only."""
    global _status
    if _status is None:
        _status = _decide()
        if not _status.reachable:
            _go_offline()
            if _status.reason.startswith(("HF_", "TRANSFORMERS_")):
                log.info("prunelight: %s; using local copies", _status.describe())
            else:
                print(
                    f"prunelight: {_status.describe()}; models, corpora and zero-shot tasks are read from "
                    "local copies (the data root, the model cache)",
                    file=sys.stderr,
                )
    return _status


def hub_reachable() -> bool:
    return hub_status().reachable


def reset() -> None:
    """Forget the decision (tests; a process that changed its environment)."""
    global _status
    _status = None


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _timeout() -> float:
    raw = os.environ.get(TIMEOUT_VARIABLE)
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError:
        log.warning("%s=%r is not a number of seconds; using %s", TIMEOUT_VARIABLE, raw, DEFAULT_TIMEOUT)
        return DEFAULT_TIMEOUT


def _decide() -> HubStatus:
    endpoint = _endpoint()
    switched = [name for name in OFFLINE_VARIABLES if _true(os.environ.get(name))]
    if switched:
        return HubStatus(False, endpoint, f"{switched[0]} is set")
    timeout = _timeout()
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:  # an HTTP answer: the server is there
        status = err.code
    except (urllib.error.URLError, OSError, ValueError) as err:
        why = getattr(err, "reason", err)
        if isinstance(why, TimeoutError) or "timed out" in str(why):
            why = f"no answer within {timeout:g} s"
        return HubStatus(False, endpoint, f"{endpoint}: {why}")
    if status >= 500:
        return HubStatus(False, endpoint, f"{endpoint} answered HTTP {status}")
    return HubStatus(True, endpoint, f"{endpoint} answered HTTP {status}")


def _go_offline() -> None:
    """Offline mode for the hub libraries, already imported or not, and for child processes."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    config = sys.modules.get("datasets.config")
    if config is not None:
        config.HF_HUB_OFFLINE = True
        if hasattr(config, "HF_DATASETS_OFFLINE"):
            config.HF_DATASETS_OFFLINE = True
