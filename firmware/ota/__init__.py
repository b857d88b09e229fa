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


