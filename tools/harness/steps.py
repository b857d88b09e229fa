"""Scenario steps, written once for both forms of the drivers.

A step is a generator that yields what the drivers' methods return: on CsmsProc/Sim that is already the value,
on Csms/AsyncSim an awaitable. @step runs it to the end either way: called with blocking drivers it returns the
step's value, called with asyncio ones it returns a coroutine:

    start, tid = start_charging(csms_proc, sim)              (pytest)
    start, tid = await start_charging(csms, async_sim)       (bench, torture)
"""
import functools
import inspect


def step(gen_fn):
    @functools.wraps(gen_fn)
    def run(driver, *args, **kwargs):
        gen = gen_fn(driver, *args, **kwargs)
        return _run_async(gen) if getattr(driver, "is_async", False) else _run(gen)
    return run


def _run(gen):
    # Blocking drivers give values, never awaitables: the coroutine ends without ever suspending.
    coro = _run_async(gen)
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("a step run with blocking drivers was given an awaitable")


async def _run_async(gen):
    value = None
    while True:
        try:
            value = gen.send(value)
        except StopIteration as done:
            return done.value
        if inspect.isawaitable(value):
            value = await value


@step
def boot_charger(csms, sim, timeout=60):
    """Waits until the charger is booted and has reported connector 1; its StatusNotification payload."""
    return (yield csms.wait_for("StatusNotification", cp=sim.cp_id, timeout=timeout,
                                where=lambda p: p.get("connectorId") == 1))


@step
def change_config(csms, cp, key, value, ok=("Accepted", "RebootRequired")):
    """ChangeConfiguration key=value; fails unless the answer's status is one of ok."""
    status = (yield csms.request(cp, "ChangeConfiguration", {"key": key, "value": str(value)})).get("status")
    if status not in ok:
        raise StepFailed("ChangeConfiguration %s=%s: %s" % (key, value, status))


@step
def start_charging(csms, sim, tag="TAG1", cable_a=32, max_a=16):
    """Plug, present the tag, let the EV ask for energy; (StartTransaction payload, transactionId) once the
    contactor is closed."""
    mark = yield csms.mark()
    yield sim.plug(cable_a)
    yield sim.ev("B", max_a)
    yield sim.tag(tag)
    start = yield csms.wait_for("StartTransaction", cp=sim.cp_id, since=mark)
    yield sim.ev("C", max_a)
    yield sim.wait_status(lambda s: s["contactor"], what="contactor closed")
    return start, (yield csms.transaction_id(sim.cp_id, since=mark))


# --- payloads the bench and torture scenarios send ------------------------------------------------------------

def local_list(version, start, n=8, update="Full"):
    return {"listVersion": version, "updateType": update,
            "localAuthorizationList": [{"idTag": "BENCH%03d" % i, "idTagInfo": {"status": "Accepted"}}
                                       for i in range(start, start + n)]}


def profile(pid=1, purpose="TxDefaultProfile", periods=3, connector=1):
    return {"connectorId": connector, "csChargingProfiles": {
        "chargingProfileId": pid, "stackLevel": 1, "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "A", "startSchedule": "2024-01-01T00:00:00Z", "chargingSchedulePeriod": [
                {"startPeriod": 3600 * i, "limit": 16.0 - 2 * i} for i in range(periods)]}}}


class StepFailed(AssertionError, RuntimeError):
    """A step's check did not hold (a failed assertion to pytest, a RuntimeError to the tools)."""
