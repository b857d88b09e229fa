# What the application needs to know of the firmware slots at boot, from the flash's files alone: the version
# BootNotification reports and whether the update engine (firmware/ota/update.py) has work; start() acts on it
# (and starts the log ring). Loaded only on a board with slots/, diag/ or update.json. Importing the slot
# code for it (slots.py and slotboot, 14 KB from .mpy) would leave their names interned and the heap in pieces
# for good; this module leaves the heap again once asked.


def start(app):
    """At boot (App.main, before the tasks) on a board with slots, an update stored or the log ring on flash:
    BootNotification's firmwareVersion becomes the running slot's, the update engine starts when it has work,
    and the log ring (firmware/diag/ring.py) when a GetDiagnostics started it before."""
    from firmware import store

    root = app.board.state_dir
    fields = app.session.boot_fields
    fields["firmwareVersion"], work = info(root, fields["firmwareVersion"])
    if work:
        app.load_fwmgmt().start_updater(app)
    if store.exists(store.join(root, "diag")):
        from firmware.diag import ring

        ring.start(app)


def info(root, default):
    """(firmwareVersion for BootNotification: the running slot's manifest version, default without slots; whether
    the update engine has work, as firmware.ota.owed() says). root: the flash root (board.state_dir)."""
    import sys
    from firmware import store

    try:
        return _read(sys, store, root, default)
    finally:
        if "firmware.ota.slots" not in sys.modules:  # this module and its package leave the heap again
            from firmware import unload

            unload("firmware.ota.boot", "firmware.ota")


def _read(sys, store, root, default):
    st = None
    for i in (0, 1):
        s = _framed(store, "%s/slots/state.%d" % (root.rstrip("/"), i))
        if isinstance(s, dict) and isinstance(s.get("gen"), int) and (st is None or s["gen"] > st["gen"]):
            st = s
    work = store.present(store.join(root, "update.json")) or (  # firmware.ota.owed() without slotboot
        st is not None and (st.get("trial") is not None or st.get("report") is not None))
    if st is not None and st.get("kind") == "image":  # a frozen build: its code is in flash, the import is cheap
        from firmware.ota import slots

        return slots.firmware_version(default, root), work
    for p in sys.path:  # slotboot put the running slot first: <root>/slots/<name>
        i = p.rfind("/slots/")
        if i >= 0 and p[:i].rstrip("/") == root.rstrip("/"):
            meta = _framed(store, p + "/slot.json")
            if isinstance(meta, dict) and meta.get("version"):
                return meta["version"], work
    return default, work


def _framed(store, path):
    # a CRC-framed JSON file (slotboot's format is firmware/store.py's), None when missing or damaged
    raw = store.read(path)
    return store._decode(raw)[0] if store._check(raw) is None else None
