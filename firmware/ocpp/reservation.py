# Reservation profile (OCPP 1.6 §5.13, §5.3; digest §2.6): ReserveNow / CancelReservation, expiry, and who may
# use a reserved connector. One connector, so at most one reservation; connector 0 reserves that connector.
from firmware import clock, log, store
from firmware.ocpp.rpc import STR, INT, TIME

_TAG = "resv"
_RESERVE = (("connectorId", INT, True, 0), ("expiryDate", TIME, True, None), ("idTag", STR, True, 20),
            ("parentIdTag", STR, False, 20), ("reservationId", INT, True, None))
_CANCEL = (("reservationId", INT, True, None),)
_BUSY = ("Preparing", "Charging", "SuspendedEV", "SuspendedEVSE", "Finishing")


class Reservations:
    def __init__(self, cfg, state_dir, connector):
        self.cfg = cfg
        self.connector = connector
        self._path = state_dir + "/reservation.json"
        # [reservationId, idTag, parentIdTag or None, expiry epoch]; survives a reboot (issue 4)
        self.current = store.read_json(self._path, None)

    def _save(self, value):
        self.current = value
        if value is None:
            store.delete(self._path)
        else:
            store.write_json(self._path, value)

    # ---- Central System calls ----
    def reserve_now(self, p):
        cid = p["connectorId"]
        if cid > 1 or (cid == 0 and not self.cfg.get("ReserveConnectorZeroSupported")):
            return {"status": "Rejected"}
        expiry = clock.parse_iso(p["expiryDate"])
        if expiry is None or expiry <= clock.now():
            return {"status": "Rejected"}
        cur = self.current
        status = self.connector.reporter.status
        if cur is None or cur[0] != p["reservationId"]:  # a known id is replaced whatever the state
            if status == "Faulted":
                return {"status": "Faulted"}
            if status == "Unavailable":
                return {"status": "Unavailable"}
            if cur is not None or status in _BUSY or self.connector.tx is not None:
                return {"status": "Occupied"}
        self._save([p["reservationId"], p["idTag"].upper(), (p.get("parentIdTag") or "").upper() or None, expiry])
        log.info(_TAG, "reservation %d for %s until %s" % (p["reservationId"], p["idTag"], p["expiryDate"]))
        self.connector.tick()
        return {"status": "Accepted"}

    def cancel(self, p):
        cur = self.current
        if cur is None or cur[0] != p["reservationId"]:
            return {"status": "Rejected"}
        self._save(None)
        log.info(_TAG, "reservation %d cancelled" % cur[0])
        self.connector.tick()
        return {"status": "Accepted"}

    # ---- used by the connector ----
    def active(self, connector_id):
        return self.current is not None

    def admits(self, connector_id, tag, parent):
        """(may this idTag start here, the reservationId it consumes or None)."""
        cur = self.current
        if cur is None:
            return True, None
        tag = tag.upper()
        if tag == cur[1] or (cur[2] and ((parent and parent.upper() == cur[2]) or tag == cur[2])):
            return True, cur[0]
        return False, None

    def consumed(self, reservation_id):
        if self.current is not None and self.current[0] == reservation_id:
            self._save(None)

    def check(self, operative, faulted):
        """Ends the reservation at its expiry, or when the connector becomes Unavailable or Faulted."""
        cur = self.current
        if cur is not None and (clock.now() >= cur[3] or not operative or faulted):
            log.info(_TAG, "reservation %d ended" % cur[0])
            self._save(None)


def register(session, app):
    """Installs ReserveNow and CancelReservation on session, acting on app.reservations."""
    session.handle("ReserveNow", _RESERVE, app.reservations.reserve_now)
    session.handle("CancelReservation", _CANCEL, app.reservations.cancel)
