"""Shared steps for the Core-profile tests: a booted charger, a running charge session, board waits; the
scenario steps themselves live in tools/harness/steps.py (bench and torture run the same ones)."""
from harness import steps

CP = "CP1"


def boot(csms_factory, sim_factory, config=None, csms_kwargs=None, **sim_kwargs):
    """A Central System and a booted charger whose connector status has been reported; config is a dict of
    OCPP keys set with ChangeConfiguration before the test proper starts."""
    csms = csms_factory(**(csms_kwargs or {}))
    sim = sim_factory(csms.url, **sim_kwargs)
    steps.boot_charger(csms, sim, timeout=30)
    for key, value in (config or {}).items():
        steps.change_config(csms, CP, key, value, ok=("Accepted",))
    return csms, sim


def status_seen(csms, status, since=0, timeout=30, count=1):
    return csms.wait_for("StatusNotification", cp=CP, since=since, timeout=timeout, count=count,
                         where=lambda p: p["connectorId"] == 1 and p["status"] == status)


def board_until(sim, pred, timeout=15, msg="board state"):
    """Waits until pred(status) holds for the virtual board's status; returns that status."""
    return sim.wait_status(pred, timeout, msg)


def start_charging(csms, sim, tag="TAG1", cable_a=32, max_a=16):
    """Plug, present the tag, let the EV ask for energy; returns the StartTransaction payload and its
    transactionId once the contactor is closed."""
    return steps.start_charging(csms, sim, tag, cable_a, max_a)


def transaction_id(csms, since=0):
    """The transactionId the Central System gave in its StartTransaction answer after index since."""
    return csms.transaction_id(CP, since)


def in_calls(csms, action=None, since=0):
    """(action, payload) of every CALL from the charger after index since, in order."""
    out = []
    for m in csms.messages(CP)[since:]:
        msg = m["msg"]
        if m["dir"] == "in" and msg and msg[0] == 2 and (action is None or msg[2] == action):
            out.append((msg[2], msg[3]))
    return out
