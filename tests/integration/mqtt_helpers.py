"""The test's own MQTT client (paho-mqtt on CPython) against a MosquittoProc broker (tests/conftest.py).

    w = MqttWatcher(broker, ["evse/#"])          # subscribed once this returns
    w.wait_for("evse/status", b"online")          # -> the message (topic, payload, qos, retain)
    w.publish("evse/cmd", b"stop", qos=1)         # returns once the broker has it
    w.close()
"""
import itertools
import threading
import time

import paho.mqtt.client as paho

_ids = itertools.count(1)


class Message:
    def __init__(self, m):
        self.topic = m.topic
        self.payload = bytes(m.payload)
        self.qos = m.qos
        self.retain = bool(m.retain)

    def __repr__(self):
        return "Message(%r, %r, qos=%d, retain=%s)" % (self.topic, self.payload, self.qos, self.retain)


class MqttWatcher:
    """Records every message on its subscriptions (in arrival order)."""

    def __init__(self, broker, topics=(), user="evse", password=None, tls=False, qos=1, timeout=10):
        self.messages = []
        self._cond = threading.Condition()
        self._acked = set()
        self.c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="watcher-%d" % next(_ids),
                             protocol=paho.MQTTv311)
        self.c.username_pw_set(user, broker.users[user] if password is None else password)
        if tls:
            self.c.tls_set(ca_certs=broker.pki["ca"])
        self.c.on_message = self._on_message
        self.c.on_subscribe = self._on_subscribe
        self.c.connect("127.0.0.1", broker.tls_port if tls else broker.port, keepalive=30)
        self.c.loop_start()
        for topic in topics:
            self.subscribe(topic, qos, timeout)

    def _on_message(self, client, userdata, m):
        with self._cond:
            self.messages.append(Message(m))
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def subscribe(self, topic, qos=1, timeout=10):
        rc, mid = self.c.subscribe(topic, qos)
        assert rc == paho.MQTT_ERR_SUCCESS, rc
        with self._cond:
            assert self._cond.wait_for(lambda: mid in self._acked, timeout), "no SUBACK for %s" % topic

    def wait_for(self, topic, payload=None, timeout=10, since=0):
        """The first message on topic (with that payload, when given) from index since on."""
        deadline = time.monotonic() + timeout

        def find():
            for m in self.messages[since:]:
                if m.topic == topic and (payload is None or m.payload == payload):
                    return m
            return None

        with self._cond:
            while True:
                m = find()
                if m is not None:
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("no message on %s%s within %s s; got %r"
                                         % (topic, "" if payload is None else " = %r" % payload, timeout,
                                            self.messages))
                self._cond.wait(left)

    def publish(self, topic, payload, qos=1, retain=False, timeout=10):
        info = self.c.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(timeout)
        assert info.is_published(), "paho could not publish to %s" % topic

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()
