"""The Central System as the harness drives it.

There is one Central System, tools/csms.py (on the `ocpp` package), driven two ways:
CsmsProc runs it as a child process and drives it over its control socket, blocking: the tests, `make sim`.
Csms runs it in this process (asyncio), quiet, and books every transaction (its start, MeterValues and stop,
resends recognised) from the frames it sees: what `make bench` times against (no control-socket hop in a round
trip) and what `make torture` counts with ("every transaction once, in order").
Both offer what the scenario steps (steps.py) use: mark(), wait_for(), request(), transaction_id().
"""
import asyncio
import bisect
import itertools
import json
import logging
import os
import shutil
import tempfile
import time

import csms as central  # tools/csms.py
from harness import PY, TOOLS
from harness.proc import ChildProcess, ProcessFailed, json_request, stable_port, wait_until


def _frame_time(entry):
    return entry[0]


class CallErrorReply(AssertionError, RuntimeError):
    """The charge point answered a CALL with a CALLERROR (or the CSMS could not deliver it)."""


class CallTimeout(Exception):
    pass


class Conn:
    """One WebSocket connection of a charge point as the harness sees it: answers awaited by uniqueId, and the
    strays (answers whose uid we never sent, e.g. "-1" CALLERRORs to malformed frames)."""

    def __init__(self, cp, sock):
        self.cp = cp
        self.sock = sock
        self.ws = sock.ws
        self.waiting = {}       # uid -> future of the answer frame
        self.strays = []
        self.closed = asyncio.Event()


class _Settings(central.Settings):
    """A Central System that knows every idTag: any_tag is their status unless tag_statuses names one."""

    any_tag = "Accepted"

    def tag_status(self, id_tag):
        return self.tag_statuses.get(id_tag, self.any_tag)


class Csms:
    """tools/csms.py's Central System run in this process, quiet, with a ledger: answers the charge point's
    CALLs at once (BootNotification interval 120 s, the charger's own default, so its default timing holds),
    keeps every frame with its arrival time (frames, unless keep_frames is off) and books transactions.

    Transactions: tx[id] keeps start, meter values and stop in arrival order, so torture can check "once, in
    order"; tag_status answers Authorize and StartTransaction for every idTag. A StartTransaction identical to
    one already booked (same charger, connector, idTag, meterStart and timestamp) is the charger's resend after
    it lost our answer: tools/csms.py gives it the same id back, as a production Central System does, and it
    is counted in tx[id]["resends"]; so are a MeterValues or StopTransaction identical to one already booked."""

    is_async = True

    def __init__(self, port=None):
        # outside the ephemeral range: torture restarts it on the same port (proc.stable_port)
        port = port or stable_port()
        args = central.build_parser().parse_args(["--port", str(port), "--interval", "120", "--ping-interval", "0"])
        logging.getLogger("ocpp").setLevel(logging.CRITICAL)  # our CPs send garbage on purpose; frames say it
        self.journal = central.Journal(echo=False, keep=False)
        self.journal.observers.append(self._observe)
        self.cs = central.CentralSystem(args, self.journal)
        self.cs.settings = _Settings(args)
        self.frames = []        # (monotonic t, cp, "in"|"out", parsed frame or None, raw text)
        # False: of the frames only the charger's own CALLs are kept (what the steps wait on), not a flood of ours
        self.keep_frames = True
        self.tx = {}
        self.tx_order = []      # (cp, action, payload, transactionId) of every transaction message, as received
        self.next_tx = 1        # above every transactionId booked so far
        self.incoming = {}      # action -> count of CALLs received
        self.on_frame = None    # callback(t, cp, frame) for incoming CALLs
        self._conns = {}        # LoggedSocket -> Conn
        self._starts = {}       # (cp, uid) -> payload of a StartTransaction not answered yet
        self._watchers = set()

    @property
    def port(self):
        return self.cs.args.port

    @property
    def url(self):
        return "ws://127.0.0.1:%d/ocpp" % self.port

    @property
    def server(self):
        """None while the Central System is down (stop())."""
        return self.cs.ws_server

    @property
    def tag_status(self):
        return self.cs.settings.any_tag

    @tag_status.setter
    def tag_status(self, status):
        self.cs.settings.any_tag = status

    @property
    def password(self):
        return self.cs.settings.auth.get("*")

    @password.setter
    def password(self, pw):
        """When set, HTTP Basic auth "<cp>:<password>" is required of every charge point (401 otherwise)."""
        self.cs.settings.auth = {} if pw is None else {"*": central.password_bytes(pw)}

    @property
    def refused(self):
        """Connections refused (401)."""
        return sum(1 for e in self.journal.events if e["event"] == "refused")

    @property
    def conns(self):
        return {cp: self._conn(c.sock) for cp, c in self.cs.cps.items()}

    async def start(self):
        await self.cs.start()
        self.cs.args.port = self.cs.ws_server.sockets[0].getsockname()[1]  # a restart listens on the same port
        return self

    async def stop(self):
        """Central System down: the listener closes and every connection drops."""
        if self.cs.ws_server is not None:
            await self.cs.close()

    async def wait_connected(self, cp, timeout=60):
        deadline = time.monotonic() + timeout
        while cp not in self.cs.cps:
            if time.monotonic() > deadline:
                raise asyncio.TimeoutError()
            await asyncio.sleep(0.02)
        return self._conn(self.cs.cps[cp].sock)

    def _conn(self, sock):
        conn = self._conns.get(sock)
        if conn is None:
            conn = self._conns[sock] = Conn(sock.cp_id, sock)
            task = asyncio.get_running_loop().create_task(self._watch(conn))
            self._watchers.add(task)
            task.add_done_callback(self._watchers.discard)
        return conn

    async def _watch(self, conn):
        await conn.ws.wait_closed()
        conn.closed.set()
        for fut in conn.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))

    def _observe(self, entry, sock):
        """Every frame tools/csms.py receives or sends (Journal observer)."""
        frame = entry["msg"] if entry["msg"] is not None else central.parse_frame(entry["raw"])
        cp = entry["cp"]
        t = time.monotonic()
        if self.keep_frames or (entry["dir"] == "in" and isinstance(frame, list) and frame[:1] == [2]):
            self.frames.append((t, cp, entry["dir"], frame, entry["raw"]))
        if entry["dir"] == "out":
            if isinstance(frame, list) and len(frame) > 2 and frame[0] == 3:
                self._book_start(cp, frame)
            return
        conn = self._conn(sock)
        if not isinstance(frame, list) or len(frame) < 3:
            conn.strays.append(frame)
            return
        if frame[0] == 2 and len(frame) == 4:
            action = frame[2]
            self.incoming[action] = self.incoming.get(action, 0) + 1
            if self.on_frame:
                self.on_frame(t, cp, frame)
            self._book(cp, action, frame)
            return
        try:
            fut = conn.waiting.pop(frame[1], None)
        except TypeError:  # an unhashable uniqueId
            fut = None
        if fut is not None and not fut.done():
            fut.set_result(frame)
        else:
            conn.strays.append(frame)

    def _book(self, cp, action, frame):
        p = frame[3]
        if not isinstance(p, dict):
            return
        if action == "StartTransaction":
            self._starts[(cp, frame[1])] = p   # booked with the id of our answer
        elif action == "StopTransaction":
            t = self.tx.get(p.get("transactionId"))
            if t is not None and t["stop"] == p:
                t["resends"] += 1  # the same Stop again: its answer was lost, it is not a second Stop
            elif t is not None:
                t["stops"] += 1
                t["stop"] = p
                self.tx_order.append((cp, action, p, p.get("transactionId")))
            else:
                self.tx_order.append((cp, action, p, p.get("transactionId")))
        elif action == "MeterValues":
            t = self.tx.get(p.get("transactionId"))
            if t is not None and p in t["meter"]:
                t["resends"] += 1  # identical values again after a lost answer: booked once
            else:
                if t is not None:
                    t["meter"].append(p)
                self.tx_order.append((cp, action, p, p.get("transactionId")))

    def _book_start(self, cp, answer):
        p = self._starts.pop((cp, answer[1]), None)
        if p is None or not isinstance(answer[2], dict):
            return
        tid = answer[2].get("transactionId")
        if tid in self.tx:
            self.tx[tid]["resends"] += 1   # tools/csms.py recognised a resend: the same id again
            return
        self.tx[tid] = {"cp": cp, "start": p, "meter": [], "stop": None, "stops": 0, "resends": 0,
                        "t": time.monotonic()}
        self.next_tx = max(self.next_tx, tid + 1)
        self.tx_order.append((cp, "StartTransaction", p, tid))

    _uids = itertools.count(1)

    async def call(self, cp, action, payload, timeout=30):
        """(answer frame, round trip s). The round trip runs from just before the send to the answer's arrival."""
        return await self.send_wait(cp, json.dumps([2, "b%d" % next(self._uids), action, payload]), timeout)

    async def send_wait(self, cp, text, timeout=30, uid=None):
        c = self.cs.cps.get(cp)
        if c is None:
            raise ConnectionError("%s is not connected" % cp)
        conn = self._conn(c.sock)
        if uid is None:
            uid = json.loads(text)[1]
        fut = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a dropped link fails unawaited ones
        conn.waiting[uid] = fut
        t0 = time.perf_counter()
        await c.sock.send(text)
        try:
            frame = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            conn.waiting.pop(uid, None)
            raise CallTimeout("%s: no answer within %s s" % (text[:80], timeout))
        return frame, time.perf_counter() - t0

    async def send_raw(self, cp, data):
        c = self.cs.cps.get(cp)
        if c is None:
            raise ConnectionError("%s is not connected" % cp)
        await c.sock.send(data)

    async def drop(self, cp):
        c = self.cs.cps.get(cp)
        if c is not None:
            conn = self._conn(c.sock)
            await c.sock.ws.close()
            await conn.closed.wait()
            # the Central System forgets the connection when its handler ends, a moment after the close: until
            # then wait_connected() would hand back the dead one
            deadline = time.monotonic() + 10
            while self.cs.cps.get(cp) is c and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    def calls_in(self, cp=None, action=None, since_t=0.0):
        # frames are appended in time order: start at since_t rather than scan a long run's thousands of frames
        # at each of wait_call's polls (50 a second)
        frames = self.frames
        first = bisect.bisect_left(frames, since_t, key=_frame_time) if since_t > 0 else 0
        return [(t, f) for t, c, d, f, _ in itertools.islice(frames, first, None)
                if d == "in" and (cp is None or c == cp) and isinstance(f, list) and len(f) == 4
                and f[0] == 2 and (action is None or f[2] == action)]

    async def wait_call(self, cp, action, since_t=0.0, timeout=30, where=None):
        deadline = time.monotonic() + timeout
        while True:
            hits = [(t, f) for t, f in self.calls_in(cp, action, since_t) if where is None or where(f[3])]
            if hits:
                return hits[0]
            if time.monotonic() > deadline:
                raise TimeoutError("no %s from %s within %s s" % (action, cp, timeout))
            await asyncio.sleep(0.02)

    # --- what the scenario steps use (CsmsProc has the same) --------------------------------------------------

    def mark(self):
        """A point from which wait_for(since=...) and transaction_id(since=...) look."""
        return time.monotonic()

    async def wait_for(self, action, cp=None, since=0.0, where=None, timeout=30):
        """The payload of the first CALL of action from cp after mark since (where: a predicate on it)."""
        return (await self.wait_call(cp, action, since_t=since, timeout=timeout, where=where))[1][3]

    async def request(self, cp, action, payload, timeout=30):
        """The CALLRESULT payload of a CALL; CallErrorReply on a CALLERROR."""
        frame, _ = await self.call(cp, action, payload, timeout)
        if frame[0] != 3:
            raise CallErrorReply("%s to %s: %r" % (action, cp, frame))
        return frame[2]

    async def transaction_id(self, cp, since=0.0, timeout=15):
        """The id of the newest transaction of cp booked after mark since."""
        deadline = time.monotonic() + timeout
        while True:
            ids = [tid for tid, t in self.tx.items() if t["cp"] == cp and t["t"] >= since]
            if ids:
                return max(ids)
            if time.monotonic() > deadline:
                raise TimeoutError("no transaction of %s booked within %s s" % (cp, timeout))
            await asyncio.sleep(0.02)


class CsmsProc(ChildProcess):
    """tools/csms.py as a child process. messages() accumulates across restarts (indexes stay valid)."""

    name = "csms"
    is_async = False
    ready_pattern = r"^CSMS READY url=(\S+) control=127\.0\.0\.1:(\d+)"

    def __init__(self, port=None, tls=False, pki=None, auth=None, tags=("TAG1",), boot_status="Accepted",
                 interval=300, extra_args=()):
        super().__init__()
        # Ports outside the ephemeral range (proc.stable_port), kept across restarts: the charger knows the
        # WebSocket port, the test the control port. Another worker may pick the same port between our check
        # and the tool's bind: start() then tries new ones.
        self._chosen = not port
        self._started = False
        self.port = port or stable_port()
        self.control_port = stable_port()
        self.tls = tls
        self.pki = pki
        self.auth = dict(auth or {})
        self.tags = tuple(tags)
        self.boot_status = boot_status
        self.interval = interval
        self.extra_args = tuple(extra_args)
        self._tmp = tempfile.mkdtemp(prefix="csms-")
        self.log_path = os.path.join(self._tmp, "csms.jsonl")
        self._msgs = []
        self._since = 0
        if tls and pki is None:
            from pki import make_pki
            self.pki = make_pki(os.path.join(self._tmp, "pki"))

    @property
    def url(self):
        return "%s://127.0.0.1:%d/ocpp" % ("wss" if self.tls else "ws", self.port)

    @property
    def cafile(self):
        return self.pki["ca"] if self.pki else None

    @property
    def output(self):
        return self.lines

    def argv(self):
        argv = [PY, os.path.join(TOOLS, "csms.py"), "--port", str(self.port),
                "--control", str(self.control_port), "--log", self.log_path,
                "--tags", ",".join(self.tags), "--boot-status", self.boot_status,
                "--interval", str(self.interval)]
        if self.tls:
            argv += ["--certfile", self.pki["server_cert"], "--keyfile", self.pki["server_key"]]
        if self.auth:
            argv += ["--auth"] + ["%s:%s" % kv for kv in self.auth.items()]
        return argv + list(self.extra_args)

    def start(self):
        self._since = 0
        for attempt in range(3):
            try:
                ready = self._spawn(self.argv())
                break
            except ProcessFailed:  # on the first start only: a restart must keep its ports
                if self._started or attempt == 2 or "address already in use" not in "\n".join(self.lines[-5:]):
                    raise
                if self._chosen:
                    self.port = stable_port()
                self.control_port = stable_port()
        self._started = True
        self.port = int(ready.group(1).rsplit(":", 1)[1].split("/", 1)[0])
        self.control_port = int(ready.group(2))
        return self

    def stop(self):
        if self.running:
            try:
                self._fetch()
            except (OSError, ValueError):
                pass   # the output tail tells what happened to it
        self._terminate(10)

    def close(self):
        """stop() and delete the temporary files (log, generated PKI)."""
        self.stop()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def restart(self):
        self.stop()
        return self.start()

    def control(self, cmd, timeout=None):
        wait = float(cmd.get("timeout", 10)) + 10 if timeout is None else timeout
        return json_request(self.control_port, cmd, wait)

    def _fetch(self):
        reply = self.control({"cmd": "messages", "since": self._since})
        self._msgs.extend(reply["messages"])
        self._since = reply["next"]

    def messages(self, cp=None):
        """Every frame logged since the first start: dicts t, cp, dir ("in"/"out"), raw, msg."""
        if self.running:
            self._fetch()
        return [m for m in self._msgs if cp is None or m["cp"] == cp]

    def calls(self, action, cp=None, direction="in", since=0):
        """Payloads of the CALLs with this action (index since into messages() to skip older ones)."""
        out = []
        for m in self.messages(cp)[since:]:
            msg = m["msg"]
            if (m["dir"] == direction and msg and len(msg) > 3 and msg[0] == 2 and msg[2] == action):
                out.append(msg[3])
        return out

    def wait_for(self, action, cp=None, direction="in", count=1, timeout=30, where=None, since=0):
        """The count-th payload of a matching CALL (where: predicate on the payload), waiting for it."""
        def found():
            hits = [p for p in self.calls(action, cp, direction, since) if where is None or where(p)]
            return (hits[count - 1],) if len(hits) >= count else None  # a tuple: {} payloads are falsy

        desc = "%d x %s (%s, cp=%s)" % (count, action, direction, cp)
        return wait_until(lambda: found(), timeout, 0.1, desc)[0]

    def connected(self):
        return self.control({"cmd": "connected"})["cps"]

    def call(self, cp, action, payload, timeout=30, validate=True):
        """The CALLRESULT payload; raises CallErrorReply on a CALLERROR, timeout or invalid result.
        validate=False sends a payload the ocpp package's schemas would refuse."""
        reply = self.control({"cmd": "call", "cp": cp, "action": action, "payload": payload,
                              "timeout": timeout, "validate": validate})
        if not reply["ok"]:
            raise CallErrorReply("%s to %s: %s" % (action, cp, reply["error"]))
        return reply["result"]

    request = call

    def mark(self):
        """A point from which wait_for(since=...) and transaction_id(since=...) look: an index into messages()."""
        return len(self.messages())

    def transaction_id(self, cp, since=0, timeout=15):
        """The transactionId the Central System gave in its StartTransaction answer after index since."""
        def find():
            msgs = self.messages(cp)[since:]
            start_ids = {m["msg"][1] for m in msgs if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2
                         and m["msg"][2] == "StartTransaction"}
            for m in msgs:
                if m["dir"] == "out" and m["msg"] and m["msg"][0] == 3 and m["msg"][1] in start_ids:
                    return (m["msg"][2]["transactionId"],)
            return None
        return wait_until(find, timeout, msg="StartTransaction answer")[0]

    def raw(self, cp, text, timeout=10):
        reply = self.control({"cmd": "raw", "cp": cp, "text": text, "timeout": timeout})
        assert reply["ok"], reply
        return reply["reply"]

    def set(self, **settings):
        reply = self.control(dict(settings, cmd="set"))
        assert reply["ok"], reply
        return reply
