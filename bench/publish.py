#!/usr/bin/env python3
"""Publishes HZ events a second for SECS seconds by HTTP POST on one keep-alive
connection; each event's data is its publish time (CLOCK_MONOTONIC ns), which
sse_load -L turns into publish-to-delivery latency. Prints how many were
accepted (2xx). Usage: publish.py PORT PATH HZ SECS"""
import http.client
import sys
import time

port, path, hz, secs = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
ok = 0
start = time.monotonic()
n = int(hz * secs)
for i in range(n):
    due = start + i / hz
    now = time.monotonic()
    if due > now:
        time.sleep(due - now)
    conn.request("POST", path, body=str(time.monotonic_ns()), headers={"Content-Type": "text/plain"})
    res = conn.getresponse()
    res.read()
    if 200 <= res.status < 300:
        ok += 1
print(ok)
