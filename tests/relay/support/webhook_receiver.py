"""A Standard Webhooks receiver for tests/relay/events.rs: an outside view of mailveil's event
webhook. It checks every request's signature on its own (Python's hmac and base64, not the
relay's code), answers 401 to a bad one and 503 while the file MODE says "503", and appends
each accepted event as one JSON line to OUT: {"id", "type", "queue_id", "delivery"}.
Every request's outcome is appended to OUT + ".requests" ("ok", "503", "badsig").

usage: webhook_receiver.py PORT SECRET OUT MODE
"""
import base64
import hashlib
import hmac
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, secret, out, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
lock = threading.Lock()


def note(what):
    with open(out + ".requests", "a") as f:
        f.write(what + "\n")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        msg_id = self.headers.get("webhook-id", "")
        ts = self.headers.get("webhook-timestamp", "")
        signed = f"{msg_id}.{ts}.".encode() + body
        expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        given = [s.split(",", 1)[1] for s in self.headers.get("webhook-signature", "").split() if "," in s]
        with lock:
            if not any(hmac.compare_digest(expected, g) for g in given):
                note("badsig")
                self.send_response(401)
                self.end_headers()
                return
            try:
                state = open(mode).read().strip()
            except OSError:
                state = "ok"
            if state == "503":
                note("503")
                self.send_response(503)
                self.end_headers()
                return
            events = json.loads(body)["data"]
            with open(out, "a") as f:
                for e in events:
                    keep = {k: e.get(k) for k in ("id", "type", "queue_id", "delivery")}
                    f.write(json.dumps(keep) + "\n")
            note("ok")
        self.send_response(200)
        self.end_headers()


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
