# Runs first on every reset. Kept tiny: the application starts from main.py.
import gc
import sys
import slotboot

slotboot.select()  # the firmware slot to run goes first on sys.path; a flash without slots/ changes nothing
del sys.modules["slotboot"], slotboot  # out of the heap until an update needs it
gc.collect()
