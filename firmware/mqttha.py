# Home Assistant MQTT discovery documents for the charger, generated from one compact table (heap: a string costs
# its length; per-entity dicts exist only while one document is encoded). Imported by firmware/mqttfront.py at a
# connection when MqttDiscovery is on.
#
# Every document uses Home Assistant's abbreviations (stat_t for state_topic, ...) and "~" for the base topic, which
# Home Assistant expands itself: about half the bytes. They all read the one JSON state document (<base>/state) with
# a value template, name the availability topic (<base>/availability: online/offline, the will) and carry the
# device block, so Home Assistant shows one device with these entities.
import json

# One line per entity: component;object_id;name;unit;device_class;state_class;value;flags
#   value  what follows "value_json." in the template (a field of the state document, maybe with a filter)
#   flags  d: diagnostic entity; t: only when the id tag is published (MqttIdTag); l: only with LoadMode on
_T = (
    "\n"
    "sensor;status;Status;;;;status;\n"
    "sensor;power;Power;W;power;measurement;power_w;\n"
    "sensor;energy;Energy;kWh;energy;total_increasing;energy_wh/1000;\n"
    "sensor;current;Current;A;current;measurement;current_a|max;\n"
    "sensor;offered;Offered current;A;current;measurement;offered_a;\n"
    "sensor;session_energy;Session energy;kWh;energy;total_increasing;session_energy_wh/1000;\n"
    "sensor;session_time;Session duration;s;duration;measurement;session_s;\n"
    "sensor;id_tag;Id tag;;;;id_tag or '';t\n"
    "sensor;load_limit;Load limit;A;current;measurement;load_limit_a;l\n"
    "sensor;error;Error;;;;error_code;d\n"
    "sensor;pilot;Pilot state;;;;pilot;d\n"
    "binary_sensor;plugged;Plugged in;;plug;;plugged;\n"
    "binary_sensor;cs_link;Central System link;;connectivity;;cs_online;d\n"
    "button;start;Start charging;;;;;\n"
    "button;stop;Stop charging;;;;;\n"
    "number;limit;Current limit;A;current;;limit_a;\n"
    "switch;available;Available;;;;available;\n"
)


def _rows():
    t = _T
    i = 1
    while i < len(t):
        j = t.find("\n", i)
        yield t[i:j].split(";")
        i = j + 1


def entities(with_tag, with_load):
    """The entities offered, as "component/object_id", in table order."""
    out = []
    for r in _rows():
        f = r[7]
        if ("t" in f and not with_tag) or ("l" in f and not with_load):
            continue
        out.append(r[0] + "/" + r[1])
    return out


def document(entity, base, node, device, max_a):
    """The discovery document (JSON text) of one entity ("component/object_id"). device: the device block
    (abbreviated keys); max_a: the top of the current-limit number."""
    comp, _, obj = entity.partition("/")
    for r in _rows():
        if r[0] == comp and r[1] == obj:
            break
    else:
        raise ValueError("no entity %s" % entity)
    d = {"~": base, "name": r[2], "uniq_id": node + "_" + obj, "avty_t": "~/availability", "dev": device}
    if r[3]:
        d["unit_of_meas"] = r[3]
    if r[4]:
        d["dev_cla"] = r[4]
    if r[5]:
        d["stat_cla"] = r[5]
    if "d" in r[7]:
        d["ent_cat"] = "diagnostic"
    v = "value_json." + r[6]
    if comp == "button":
        d["cmd_t"] = "~/cmd/" + obj
        d["pl_prs"] = "{}"
    else:
        d["stat_t"] = "~/state"
    if comp == "sensor":
        d["val_tpl"] = "{{" + v + "}}"
    elif comp == "binary_sensor":
        d["val_tpl"] = "{{'ON' if " + v + " else 'OFF'}}"
    elif comp == "switch":
        d["cmd_t"] = "~/cmd/" + obj
        d["val_tpl"] = "{{'true' if " + v + " else 'false'}}"
        d["pl_on"] = "true"
        d["pl_off"] = "false"
    elif comp == "number":
        # No limit in force shows as the installation maximum: setting that is the same as no limit.
        d["cmd_t"] = "~/cmd/" + obj
        d["val_tpl"] = "{{" + v + " if " + v + " is not none else value_json.max_a}}"
        d["min"] = 0
        d["max"] = max_a
        d["step"] = 1
    return json.dumps(d)
