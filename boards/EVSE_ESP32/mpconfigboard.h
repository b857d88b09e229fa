// A charger on an ESP32-WROOM with the EVSE firmware frozen in (docs/custom-build.md). tools/deploy.py tells such a
// board by its frozen `firmware` package, not by this name.
#define MICROPY_HW_BOARD_NAME "EVSE charger (ESP32, frozen firmware)"
#define MICROPY_HW_MCU_NAME "ESP32"
