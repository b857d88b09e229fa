# MicroPython esp32 port board definition for a charger on an ESP32-WROOM (4 MiB flash, no PSRAM), with the
# firmware frozen into the image (manifest.py). Build steps: docs/custom-build.md.
set(IDF_TARGET esp32)

# The partition table lives in this directory; ESP-IDF resolves a relative CONFIG_PARTITION_TABLE_CUSTOM_FILENAME
# against the port directory, so the absolute path goes into a generated sdkconfig fragment in the build tree.
set(EVSE_PARTITIONS_SDKCONFIG ${CMAKE_BINARY_DIR}/sdkconfig.evse_partitions)
file(WRITE ${EVSE_PARTITIONS_SDKCONFIG}
    "CONFIG_PARTITION_TABLE_CUSTOM=y\nCONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/partitions-evse-4MiB.csv\"\n")

# No boards/sdkconfig.ble: the charger has no use for Bluetooth, and leaving it out makes room in the app slots.
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${SDKCONFIG_IDF_VERSION_SPECIFIC}
    ${MICROPY_BOARD_DIR}/sdkconfig.board
    ${EVSE_PARTITIONS_SDKCONFIG}
)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
