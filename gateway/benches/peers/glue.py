#!/usr/bin/python3
"""The glue-script peer of the ingest benchmark (issue 18): what an integrator writes in an
afternoon instead of a gateway. mosquitto as the broker, this script as the rules, SQLite as
the store:

    sensor --QoS 1--> mosquitto --> this script: json.loads, smoke edge?
                                      INSERT the alert, COMMIT (WAL, synchronous=FULL)
                                      publish it QoS 1, retained, on glue/alerts/{id}
                                  <--

It keeps each device's last smoke state and raises one alert on the rising edge, so it
does the same durable work per alarm as the gateway (one FULL commit before the alert is
published). It does *not* do what the gateway does besides: no per-device logs or throttle
(a flooding device shares the script's one queue with every smoke detector), no PUBACK after
the commit, no outbox for an upstream, no supervision.

Run by `gateway/benches/ingest.rs`: `glue.py HOST PORT DB_PATH`. Prints `ready` on stdout
once subscribed. Needs Debian's python3-paho-mqtt (1.6).
"""

import json
import socket
import sqlite3
import sys
import time
import uuid

import paho.mqtt.client as mqtt


def open_db(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS alerts (id TEXT PRIMARY KEY, device TEXT, kind TEXT,"
        " level TEXT, raised_at REAL, body TEXT)"
    )
    return db


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    db = open_db(path)
    smoke = {}

    def on_message(client, _userdata, msg):
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(data, dict) or "smoke" not in data:
            return
        device = msg.topic.split("/")[1]
        now = bool(data["smoke"])
        was = smoke.get(device, False)
        smoke[device] = now
        if not now or was:
            return
        alert_id = uuid.uuid4().hex
        body = json.dumps(
            {
                "id": alert_id,
                "source": {"kind": "device", "id": device},
                "kind": "smoke",
                "level": "red",
                "event": "raised",
                "raised_at": time.time(),
            }
        )
        db.execute("BEGIN IMMEDIATE")
        db.execute(
            "INSERT INTO alerts VALUES (?, ?, 'smoke', 'red', ?, ?)",
            (alert_id, device, time.time(), body),
        )
        db.execute("COMMIT")
        client.publish(f"glue/alerts/{alert_id}", body, qos=1, retain=True)

    def on_connect(client, _userdata, _flags, rc):
        if rc != 0:
            sys.exit(f"glue: connect refused: {rc}")
        # Nagle off, as the gateway's clients have it: the PUBACK and the alert must not wait
        # for each other's TCP acknowledgement (a fair peer, not a strawman).
        client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.subscribe("sensors/+/state", qos=1)

    def on_subscribe(*_args):
        print("ready", flush=True)

    client = mqtt.Client(client_id="glue-script", clean_session=True)
    client.on_connect = on_connect
    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect(host, port)
    client.loop_forever()


if __name__ == "__main__":
    main()
