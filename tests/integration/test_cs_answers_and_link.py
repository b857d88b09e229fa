"""Answers from the Central System and the link (issue 9, items 14-18): malformed answers to our CALLs, a
handshake answer without end, credentials over plain ws://, and a link that dies without a WebSocket ping."""
import os
import re
import signal
import socket
import threading
import time

from conftest import wait_until
from core_helpers import CP, boot, status_seen


def _mcu_lines(sim, pattern):
    rx = re.compile(pattern)
    return [line for line in sim.lines if "[mcu]" in line and rx.search(line)]


def _no_task_crash(sim):
    crashes = _mcu_lines(sim, r"task \w+ failed")  # a task the supervisor had to restart
    assert not crashes, crashes


def _connects(csms):
    return len([e for e in csms.control({"cmd": "events"})["events"] if e["event"] == "connect"])


def test_malformed_start_answer_is_a_failed_attempt(csms_factory, sim_factory):
    # [3, id, []] to a StartTransaction: before, the queue task crashed on conf.get once a second and sent the
    # Start 21 times in 25 s, whatever TransactionMessageAttempts said.
    csms, sim = boot(csms_factory, sim_factory, config={"TransactionMessageAttempts": 3,
                                                        "TransactionMessageRetryInterval": 1})
    csms.set(answer={"StartTransaction": []})
    mark = len(csms.messages())
    sim.cmd({"cmd": "plug", "cable_a": 32})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": 16})
    sim.cmd({"cmd": "tag", "id": "TAG1"})
    sim.wait_line(r"\[mcu\].*malformed answer to StartTransaction: payload is not an object", timeout=20)
    sim.wait_line(r"\[mcu\].*StartTransaction attempt 3/3 failed: BadAnswer", timeout=20)
    sim.wait_line(r"\[mcu\].*giving up on StartTransaction", timeout=20)
    tries = [m["t"] for m in csms.messages(CP)[mark:] if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2
             and m["msg"][2] == "StartTransaction"]
    assert len(tries) == 3, tries
    assert tries[1] - tries[0] >= 0.8 and tries[2] - tries[1] >= 1.8  # RetryInterval x 1, then x 2
    # The queue goes on: the Stop of the dropped transaction is dropped too, and later CALLs still flow.
    csms.set(answer={"StartTransaction": None})
    after = len(csms.messages())
    sim.cmd({"cmd": "unplug"})
    status_seen(csms, "Available", since=after)
    assert len(csms.calls("StartTransaction", since=mark)) == 3
    _no_task_crash(sim)


class EndlessHeadServer:
    """A TCP server that answers every WebSocket upgrade with a 101 status line and then one header line that
    never ends. Records when each connection came."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.sent = []
        self._stop = False
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(time.monotonic())
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, conn):
        sent = 0
        try:
            conn.settimeout(5)
            req = b""
            while b"\r\n\r\n" not in req:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                req += chunk
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nX-Endless: ")
            block = b"a" * 4096
            while not self._stop and sent < 4 << 20:
                conn.sendall(block)
                sent += len(block)
        except OSError:
            pass  # the client hung up: what we want
        finally:
            self.sent.append(sent)
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()
        for t in self._threads:
            t.join(10)


def test_endless_handshake_header_is_bounded_and_backed_off(sim_factory):
    # Before: MemoryError allocating ~69 KB in ws.handshake, retried about every second past the back-off.
    server = EndlessHeadServer()
    try:
        sim = sim_factory("ws://127.0.0.1:%d/ocpp" % server.port)
        wait_until(lambda: len(server.accepted) >= 3, 60, msg="three connection attempts")
        gaps = [b - a for a, b in zip(server.accepted, server.accepted[1:])]
        # ReconnectBackoffMin is 5 s and doubles: 5-7.5 s, then 10-15 s (plus the failed handshake itself)
        assert gaps[0] >= 4.5 and gaps[1] >= 9.5, gaps
        sim.wait_line(r"\[mcu\].*connect to .* failed: handshake response head longer than 8192 bytes")
        assert not _mcu_lines(sim, r"MemoryError"), sim.tail()
        _no_task_crash(sim)
    finally:
        server.close()


def test_password_over_plain_ws_is_warned_once_per_boot(csms_factory, sim_factory):
    csms = csms_factory(auth={CP: "s3cret-passw0rd"})
    sim = sim_factory(csms.url, password="s3cret-passw0rd")
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1)
    warning = r"password goes over unencrypted ws://"
    sim.wait_line(r"\[mcu\].*" + warning)
    assert csms.control({"cmd": "disconnect", "cp": CP})["ok"]
    wait_until(lambda: _connects(csms) >= 2, 40, msg="reconnected")
    assert len(_mcu_lines(sim, warning)) == 1


def test_no_password_no_authorization_header(csms_factory, sim_factory):
    # Before: "Authorization: Basic Q1AxOg==" (CP1 and an empty password) went out although none was set.
    csms = csms_factory(auth={"SOMEONE-ELSE": "x"})  # the Central System checks Basic auth
    sim = sim_factory(csms.url)

    def refusals():
        return [e["text"] for e in csms.control({"cmd": "events"})["events"] if e["event"] == "refused"]

    texts = wait_until(refusals, 30, msg="a refused connection")
    assert "no Authorization header from CP1" in texts[0], texts
    assert not _mcu_lines(sim, r"unencrypted")


def test_frozen_central_system_detected_without_websocket_ping(csms_factory, sim_factory):
    # WebSocketPingInterval 0 switched dead-link detection off altogether: now the Heartbeat that goes out
    # after HeartbeatInterval gets no answer within ResponseTimeout, nothing else arrives -> reconnect.
    csms, sim = boot(csms_factory, sim_factory, config={"WebSocketPingInterval": 0, "ResponseTimeout": 5,
                                                        "HeartbeatInterval": 10})
    os.kill(csms.proc.pid, signal.SIGSTOP)  # TCP stays up, nothing is answered or sent
    t0 = time.monotonic()
    try:
        sim.wait_line(r"\[mcu\].*no answer to Heartbeat within 5000 ms and nothing else received, reconnecting",
                      timeout=40)
        assert time.monotonic() - t0 <= 10 + 5 + 5  # HeartbeatInterval + ResponseTimeout + the loop's second
    finally:
        os.kill(csms.proc.pid, signal.SIGCONT)
    wait_until(lambda: _connects(csms) >= 2, 60, msg="reconnected")


def test_central_system_that_pings_but_never_answers_is_left(csms_factory, sim_factory):
    # Its WebSocket layer answers and sends pings, the OCPP application behind it is stuck.
    csms, sim = boot(csms_factory, sim_factory, config={"WebSocketPingInterval": 0, "ResponseTimeout": 5},
                     csms_kwargs={"extra_args": ("--ping-interval", "1")})
    csms.set(silent={"DataTransfer": -1})
    for _ in range(3):
        sim.cmd({"cmd": "console", "line": "datatransfer org.micropython.evse"})
    sim.wait_line(r"\[mcu\].*3 CALLs in a row unanswered, reconnecting", timeout=40)
    assert len(_mcu_lines(sim, r"DataTransfer failed: TimeoutError")) >= 2
    # the Central System sees the connection a moment before the charger has read the handshake's answer: a CALL
    # made in between fails Offline, so wait for the charger's side too
    wait_until(lambda: _connects(csms) >= 2 and len(_mcu_lines(sim, r"ocpp: connected to")) >= 2, 40,
               msg="reconnected")
    csms.set(silent={"DataTransfer": 0})
    mark = len(csms.messages())
    sim.cmd({"cmd": "console", "line": "datatransfer org.micropython.evse after"})
    csms.wait_for("DataTransfer", cp=CP, since=mark, where=lambda p: p.get("messageId") == "after")
    sim.wait_line(r"\[mcu\].*DataTransfer answer: .*Accepted")
