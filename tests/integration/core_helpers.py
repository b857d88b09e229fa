"""Shared steps for the Core-profile tests: a booted charger, a running charge session, board waits."""
from conftest import wait_until

CP = "CP1"


def boot(csms_factory, sim_factory, config=None, csms_kwargs=None, **sim_kwargs):
    """A Central System and a booted charger whose connector status has been reported; config is a dict of
    OCPP keys set with ChangeConfiguration before the test proper starts."""
    csms = csms_factory(**(csms_kwargs or {}))
    sim = sim_factory(csms.url, **sim_kwargs)
    csms.wait_for("StatusNotification", cp=CP, where=lambda p: p["connectorId"] == 1)
    for key, value in (config or {}).items():
        assert csms.call(CP, "ChangeConfiguration", {"key": key, "value": str(value)})["status"] == "Accepted", key
    return csms, sim


def status_seen(csms, status, since=0, timeout=30, count=1):
    return csms.wait_for("StatusNotification", cp=CP, since=since, timeout=timeout, count=count,
                         where=lambda p: p["connectorId"] == 1 and p["status"] == status)


def board_until(sim, pred, timeout=15, msg="board state"):
    """Waits until pred(status) holds for the virtual board's status; returns that status."""
    return wait_until(lambda: (lambda s: s if pred(s) else None)(sim.status()), timeout, msg=msg)


def start_charging(csms, sim, tag="TAG1", cable_a=32, max_a=16):
    """Plug, present the tag, let the EV ask for energy; returns the StartTransaction payload and its
    transactionId once the contactor is closed."""
    mark = len(csms.messages())
    sim.cmd({"cmd": "plug", "cable_a": cable_a})
    sim.cmd({"cmd": "ev", "state": "B", "max_a": max_a})
    sim.cmd({"cmd": "tag", "id": tag})
    start = csms.wait_for("StartTransaction", cp=CP, since=mark)
    sim.cmd({"cmd": "ev", "state": "C", "max_a": max_a})
    board_until(sim, lambda s: s["contactor"], msg="contactor closed")
    return start, transaction_id(csms, mark)


def transaction_id(csms, since=0):
    """The transactionId the Central System gave in its StartTransaction answer after index since."""
    def find():
        msgs = csms.messages(CP)[since:]
        start_ids = {m["msg"][1] for m in msgs if m["dir"] == "in" and m["msg"] and m["msg"][0] == 2
                     and m["msg"][2] == "StartTransaction"}
        for m in msgs:
            if m["dir"] == "out" and m["msg"] and m["msg"][0] == 3 and m["msg"][1] in start_ids:
                return (m["msg"][2]["transactionId"],)
        return None
    return wait_until(find, 15, msg="StartTransaction answer")[0]


def in_calls(csms, action=None, since=0):
    """(action, payload) of every CALL from the charger after index since, in order."""
    out = []
    for m in csms.messages(CP)[since:]:
        msg = m["msg"]
        if m["dir"] == "in" and msg and msg[0] == 2 and (action is None or msg[2] == action):
            out.append((msg[2], msg[3]))
    return out
