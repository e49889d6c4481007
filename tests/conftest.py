from __future__ import annotations

import pytest

from tests.mqtt_broker import Mosquitto, MosquittoMissing


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory):
    """A real mosquitto on a free local port (killed after the test); `.kill()`, `.start()`, `.url`."""
    try:
        broker = Mosquitto(tmp_path_factory.mktemp("mosquitto"))
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    with broker:
        yield broker
