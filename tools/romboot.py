# Runs on the MicroPython unix port (started by tools/sim.py --romfs): boots the firmware from a ROMFS image as a
# board with a ROMFS partition does. The image is mounted at /rom and its bytecode executes in place; here the
# image itself sits in the heap (a board maps it from flash), so the sim adds its size to -X heapsize.
#     micropython romboot.py IMAGE [SCRIPT] --board ... (the rest is main.py's command line)
# SCRIPT (a bench probe) runs after the mount instead of /rom/main.py.
import sys
import vfs

with open(sys.argv[1], "rb") as f:
    image = f.read()
vfs.mount(vfs.VfsRom(image), "/rom")
sys.path.insert(0, "/rom")
if len(sys.argv) > 2 and sys.argv[2].endswith(".py"):
    with open(sys.argv[2]) as f:
        exec(f.read())
else:
    import main  # noqa: E402,F401  /rom/main.py: builds the board and runs the application
