"""Test-only shim: translates object_store's GCS XML-API object PUT into a JSON-API
multipart upload (which fake-gcs-server implements, with ifGenerationMatch), and
passes every other request through unchanged."""
import http.client, http.server, json, sys, urllib.parse, uuid

LISTEN, UP_HOST, UP_PORT = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])

class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _relay(self, method, path, headers, body):
        c = http.client.HTTPConnection(UP_HOST, UP_PORT, timeout=30)
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        return r.status, r.getheaders(), data

    def _send(self, status, headers, data, method):
        self.send_response(status)
        skip = {"content-length", "transfer-encoding", "connection", "date"}
        for k, v in headers:
            if k.lower() not in skip:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _passthrough(self):
        body = self._body()
        hdrs = {k: v for k, v in self.headers.items() if k.lower() != "host"}
        st, h, d = self._relay(self.command, self.path, hdrs, body or None)
        self._send(st, h, d, self.command)

    do_GET = do_HEAD = do_DELETE = do_POST = _passthrough

    def do_PUT(self):
        u = urllib.parse.urlsplit(self.path)
        parts = u.path.lstrip("/").split("/", 1)
        q = urllib.parse.parse_qs(u.query)
        if len(parts) != 2 or "x-goog-copy-source" in self.headers or "uploadId" in q:
            return self._passthrough()
        bucket, obj = parts[0], urllib.parse.unquote(parts[1])
        data = self._body()
        boundary = uuid.uuid4().hex
        meta = json.dumps({"name": obj, "contentType": self.headers.get("Content-Type", "application/octet-stream")})
        body = (f"--{boundary}\r\ncontent-type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n"
                f"--{boundary}\r\ncontent-type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        params = {"uploadType": "multipart", "name": obj}
        gm = self.headers.get("x-goog-if-generation-match")
        if gm is not None:
            params["ifGenerationMatch"] = gm
        path = f"/upload/storage/v1/b/{bucket}/o?" + urllib.parse.urlencode(params)
        st, h, d = self._relay("POST", path, {"Content-Type": f"multipart/related; boundary={boundary}"}, body)
        if st == 200:
            o = json.loads(d)
            self._send(200, [("ETag", '"%s"' % o["etag"]), ("x-goog-generation", o["generation"])], b"", "PUT")
        else:
            sys.stderr.write(f"PUT {self.path} -> upstream {st} {d[:200]!r}\n")
            self._send(st, h, d, "PUT")

http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN), H).serve_forever()
