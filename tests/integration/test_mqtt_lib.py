"""lib/mqtt.py inside the MicroPython unix port (tests/integration/mqtt_probe.py) against a real broker, Debian's
mosquitto (tests/conftest.py mosquitto_factory), plain and TLS, checked by a paho-mqtt client on CPython."""
import os
import signal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import MICROPYTHON, ROOT, ChildProcess, _register, _stop_all, free_port
from mqtt_helpers import MqttWatcher

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mqtt_probe.py")


class Probe(ChildProcess):
    """mqtt_probe.py on an ESP32-sized heap; started once it said CONNECTED or ERROR."""

    name = "mqtt probe"
    ready_pattern = r"^(CONNECTED|ERROR) ?(.*)"

    def __init__(self, port, args):
        super().__init__()
        self.argv = [MICROPYTHON, "-X", "heapsize=110wK", PROBE, "127.0.0.1", str(port)] + [str(a) for a in args]

    def start(self):
        self.first = self._spawn(self.argv, env={"MICROPYPATH": ".frozen:%s" % ROOT})
        return self

    def stop(self):
        self._terminate(5)

    def events(self, *kinds):
        return [line for line in self.lines if line.split(" ", 1)[0] in kinds]


@pytest.fixture
def probe(request, pki, tmp_path):
    """probe(broker, *args, tls=False, ca=pki["ca"]) -> a started Probe; all are stopped at teardown."""
    procs = []

    def der(pem_path):
        out = tmp_path / (os.path.basename(pem_path) + ".der")
        with open(pem_path, "rb") as f:
            out.write_bytes(x509.load_pem_x509_certificate(f.read()).public_bytes(serialization.Encoding.DER))
        return str(out)

    def make(broker, *args, tls=False, ca=None, password=None, port=None):
        args = ["--user", "evse", "--password", broker.users["evse"] if password is None else password] + list(args)
        if tls:
            args += ["--ca", der(ca or broker.pki["ca"])]
        proc = Probe(port or (broker.tls_port if tls else broker.port), args)
        procs.append(proc)
        _register(request, proc)
        return proc.start()

    try:
        yield make
    finally:
        _stop_all(procs)


@pytest.fixture
def watchers():
    made = []
    yield lambda *a, **kw: made.append(MqttWatcher(*a, **kw)) or made[-1]
    for w in made:
        w.close()


def test_publish_qos0_qos1_retained(mosquitto_factory, probe, watchers):
    broker = mosquitto_factory()
    w = watchers(broker, ["evse/#"])
    p = probe(broker, "--sub", "evse/#=1", "--pub", "evse/a=0,0,zero", "--pub", "evse/b=1,0,one",
              "--pub", "evse/r=1,1,kept", "--pub", "evse/u=0,0,grüße", "--recv", 4)
    assert p.first.group(0) == "CONNECTED session=0"
    p.wait_line("^DISCONNECTED")
    assert p.events("SUBSCRIBED") == ["SUBSCRIBED evse/# 1"]
    got = [(m.topic, m.payload, m.qos, m.retain) for m in (w.wait_for(t) for t in ("evse/a", "evse/b", "evse/r",
                                                                                  "evse/u"))]
    assert got == [("evse/a", b"zero", 0, False), ("evse/b", b"one", 1, False), ("evse/r", b"kept", 1, False),
                   ("evse/u", "grüße".encode(), 0, False)]
    # its own messages came back through its subscription
    assert sorted(p.events("MSG")) == ["MSG evse/a 0 zero", "MSG evse/b 0 one", "MSG evse/r 0 kept",
                                       "MSG evse/u 0 grüße"]
    late = watchers(broker, ["evse/r"])  # the retained one is kept for later subscribers
    m = late.wait_for("evse/r")
    assert (m.payload, m.retain) == (b"kept", True)


def test_subscribe_receive_and_oversized(mosquitto_factory, probe, watchers):
    broker = mosquitto_factory()
    w = watchers(broker)
    w.publish("cmd/kept", b"retained-before", qos=1, retain=True)
    p = probe(broker, "--sub", "cmd/#=1", "--sub", "solo=0", "--recv", 5, "--max-packet", 256)
    p.wait_line("^READY")
    assert p.events("SUBSCRIBED") == ["SUBSCRIBED cmd/# 1", "SUBSCRIBED solo 0"]
    w.publish("cmd/q0", b"zero", qos=0)
    w.publish("cmd/q1", b"one", qos=1)
    w.publish("cmd/big", b"x" * 1000, qos=1)  # over max-packet: skipped, acknowledged, the link stays in step
    w.publish("solo", b"after", qos=1)  # granted QoS 0 for this filter
    p.wait_line("^DISCONNECTED")
    assert p.events("MSG", "SKIPPED") == ["MSG cmd/kept 1 retained-before", "MSG cmd/q0 0 zero", "MSG cmd/q1 0 one",
                                          "SKIPPED cmd/big", "MSG solo 0 after"]
    assert not p.events("ERROR", "CLOSED")


def test_tls_verified_round_trip(mosquitto_factory, probe, watchers):
    broker = mosquitto_factory()
    w = watchers(broker, ["tls/#"], tls=True)
    p = probe(broker, "--sub", "tls/echo=1", "--pub", "tls/echo=1,0,secure", "--recv", 1, tls=True)
    assert p.first.group(0) == "CONNECTED session=0", p.tail()
    p.wait_line("^DISCONNECTED")
    assert p.events("MSG") == ["MSG tls/echo 0 secure"]
    assert w.wait_for("tls/echo").payload == b"secure"


def test_tls_wrong_ca_or_name_refused(mosquitto_factory, probe):
    broker = mosquitto_factory()
    p = probe(broker, tls=True, ca=broker.pki["other_ca"])
    assert p.first.group(1) == "ERROR", p.tail()
    assert "TLS handshake with 127.0.0.1:%d failed" % broker.tls_port in p.first.group(2)
    assert p.first.group(2).endswith("The certificate is not correctly signed by the trusted CA")
    p = probe(broker, "--hostname", "mqtt.example.com", tls=True)  # right CA, but not the name in the certificate
    assert p.first.group(1) == "ERROR", p.tail()
    assert p.first.group(2).startswith("TLS handshake with 127.0.0.1:%d failed: The certificate Common Name (CN) "
                                       "does not match" % broker.tls_port)
    # and plain MQTT to the TLS port is no way around it
    p = probe(broker, port=broker.tls_port)
    assert p.first.group(1) == "ERROR", p.tail()


def test_bad_password_and_no_broker(mosquitto_factory, probe):
    broker = mosquitto_factory()
    p = probe(broker, password="wrong")
    assert p.first.group(0) == "ERROR connection refused: not authorised", p.tail()
    port = free_port()
    p = probe(broker, port=port)
    assert p.first.group(0) == "ERROR TCP connection to 127.0.0.1:%d refused (no broker listening?)" % port


def test_last_will_when_the_mcu_dies(mosquitto_factory, probe, watchers):
    broker = mosquitto_factory()
    w = watchers(broker, ["evse/CP1/status"])
    p = probe(broker, "--id", "CP1", "--will", "evse/CP1/status=offline", "--pub", "evse/CP1/status=1,1,online",
              "--hold")
    p.wait_line("^HOLDING")
    w.wait_for("evse/CP1/status", b"online")
    os.kill(p.proc.pid, signal.SIGKILL)  # no DISCONNECT: the broker publishes the will
    m = w.wait_for("evse/CP1/status", b"offline")
    assert m.qos == 1
    late = watchers(broker, ["evse/CP1/status"])
    m = late.wait_for("evse/CP1/status")
    assert (m.payload, m.retain) == (b"offline", True)


def test_clean_disconnect_sends_no_will(mosquitto_factory, probe, watchers):
    broker = mosquitto_factory()
    w = watchers(broker, ["evse/CP2/#"])
    p = probe(broker, "--id", "CP2", "--will", "evse/CP2/status=offline", "--pub", "evse/CP2/status=1,1,online",
              "--pub", "evse/CP2/last=1,0,bye")
    p.wait_line("^DISCONNECTED")
    w.wait_for("evse/CP2/last", b"bye")
    # a marker published after the probe left arrives after any will would have: none came
    w.publish("evse/CP2/marker", b"end")
    w.wait_for("evse/CP2/marker")
    assert [m.payload for m in w.messages if m.topic == "evse/CP2/status"] == [b"online"]


def test_keepalive_deadline_when_the_broker_freezes(mosquitto_factory, probe):
    broker = mosquitto_factory()
    p = probe(broker, "--keepalive", 1, "--timeout-ms", 1000, "--hold")
    p.wait_line("^HOLDING")
    broker.pause()  # the TCP connection stays up, but nothing answers the PINGREQ
    try:
        p.wait_line("^CLOSED no PINGRESP within 1000 ms: connection dead", timeout=15)
    finally:
        broker.resume()


def test_broker_going_away_is_reported(mosquitto_factory, probe):
    broker = mosquitto_factory()
    p = probe(broker, "--hold")
    p.wait_line("^HOLDING")
    broker.stop()
    p.wait_line("^CLOSED connection closed by the broker")
