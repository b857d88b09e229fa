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
    the update engine has work: owed()). Asked once at boot; the slot code it needs, and this package, leave the
    heap again."""
    import sys

    names = ("slotboot", "firmware.ota.slots", "firmware.ota.partition", "firmware.ota")
    had = [n for n in names if n in sys.modules]
    from firmware.ota import slots

    try:
        return slots.firmware_version(default, root), owed(root)
    finally:
        for name in names:
            if name not in had and name in sys.modules:
                del sys.modules[name]
        pkg = sys.modules.get("firmware")
        if "firmware.ota" not in had and pkg is not None and "ota" in pkg.__dict__:
            delattr(pkg, "ota")
