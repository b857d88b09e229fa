# Firmware updates (docs/ota.md). owed() is what the application asks at boot, before it imports the update
# engine (firmware/ota/update.py) at all.


def owed(root):
    """True when the update engine has work at this boot: an update in progress or a final status not yet
    delivered (update.json), or a slot on trial or a trial's outcome to report (the slot state)."""
    import sys
    from firmware import store

    if store.present(store.join(root, "update.json")):
        return True
    had = "slotboot" in sys.modules
    import slotboot

    try:
        st = slotboot.read_state(root)
    finally:
        if not had:
            del sys.modules["slotboot"]  # boot.py dropped it too: 4 KB of code
    return st is not None and (st.get("trial") is not None or st.get("report") is not None)



def at_boot(root, default):
    """(firmwareVersion for BootNotification: the running slot's manifest version, default without slots; whether
    the update engine has work, as owed() says). Asked once at boot with the flash's own files only: importing
    the slot code there (14 KB from .mpy) would leave its names interned and the heap in pieces for good."""
    import sys
    from firmware import store

    try:
        return _at_boot(sys, store, root, default)
    finally:
        if "firmware.ota.slots" not in sys.modules:  # this package leaves the heap again
            sys.modules.pop("firmware.ota", None)
            pkg = sys.modules.get("firmware")
            if pkg is not None and "ota" in pkg.__dict__:
                delattr(pkg, "ota")


def _at_boot(sys, store, root, default):
    st = None
    for i in (0, 1):
        s = _framed(store, "%s/slots/state.%d" % (root.rstrip("/"), i))
        if isinstance(s, dict) and isinstance(s.get("gen"), int) and (st is None or s["gen"] > st["gen"]):
            st = s
    work = store.present(store.join(root, "update.json")) or (
        st is not None and (st.get("trial") is not None or st.get("report") is not None))
    if st is not None and st.get("kind") == "image":  # a frozen build: its code is in flash, the import is cheap
        from firmware.ota import slots

        return slots.firmware_version(default, root), work
    for p in sys.path:  # slotboot put the running slot first: <root>/slots/<name>
        i = p.rfind("/slots/")
        if i >= 0 and p[:i].rstrip("/") == root.rstrip("/"):
            info = _framed(store, p + "/slot.json")
            if isinstance(info, dict) and info.get("version"):
                return info["version"], work
    return default, work


def _framed(store, path):
    # a CRC-framed JSON file (slotboot's format is firmware/store.py's), None when missing or damaged
    raw = store.read(path)
    return store._decode(raw)[0] if store._check(raw) is None else None
