def unload(*names):
    """Takes modules out of sys.modules and their package, so that their code leaves the heap once nothing else
    holds them: what runs rarely (the boot recovery, the setup, the console, the transfer engines) does not stay."""
    import sys

    for name in names:
        if sys.modules.pop(name, None) is not None:
            pkg, _, leaf = name.rpartition(".")
            mod = sys.modules.get(pkg)
            if mod is not None and leaf in mod.__dict__:
                delattr(mod, leaf)
