# A stand-in for the charger model (firmware/chargepoint.py) as the front ends see it (snapshot(), version,
# changed(), commands answering (ok, reason)). It records every command, and change() edits the snapshot and wakes
# whoever waits in changed(), so a test can put the page in any state; tests/integration/test_web_browser.py drives
# it through a small control socket. tests/mpy/test_chargepoint.py checks that the real model's snapshot has the
# fields of _snapshot().
import asyncio


def _snapshot():
    return {"status": "Available", "error_code": "NoError", "error_info": None, "pilot": "A", "plugged": False,
            "offered_a": 0.0, "current_a": [0.0, 0.0, 0.0], "power_w": 0.0, "energy_wh": 1234567, "max_a": 32,
            "limit_a": None, "session": None,
            "link": {"online": True, "registered": True, "answer_age_s": 3},
            "wifi": {"state": "up", "ssid": "HomeNet", "ip": "192.168.1.20", "error": None},
            "firmware": {"version": "0.1.0", "slot": "a", "update": "Idle"}, "available": True}


class FakeModel:
    def __init__(self):
        self.version = 1
        self.state = _snapshot()
        self.calls = []          # ("start", tag) / ("stop",) / ("set_limit", amps)
        self.refuse = None       # a reason: the next commands are refused with it
        self._event = asyncio.Event()

    def snapshot(self):
        return self.state

    async def changed(self, seen):
        while self.version == seen:
            self._event.clear()
            await self._event.wait()
        return self.version

    def change(self, **fields):
        self.state.update(fields)
        self.version += 1
        self._event.set()

    def _answer(self, call):
        self.calls.append(call)
        if self.refuse:
            return False, self.refuse
        return True, None

    def start(self, id_tag):
        ok, why = self._answer(("start", id_tag))
        if ok:
            self.change(session={"id_tag": id_tag or "FreeVend", "start": 0, "energy_wh": 0, "duration_s": 0,
                                 "transaction_id": None})
        return ok, why

    def stop(self):
        ok, why = self._answer(("stop",))
        if ok and self.state["session"] is not None:
            self.change(session=None, status="Finishing")
        return ok, why

    def set_limit(self, amps):
        if amps is not None and amps != 0 and not 6 <= amps <= self.state["max_a"]:
            self.calls.append(("set_limit", amps))
            return False, "limit must be 0 (pause), 6-%d A, or none" % self.state["max_a"]
        ok, why = self._answer(("set_limit", amps))
        if ok:
            self.change(limit_a=amps)
        return ok, why
