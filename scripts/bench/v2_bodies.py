#!/usr/bin/env python3
"""Writes the V2 infer bodies for the rows of the ml-deploy bodies train_model.py wrote.

Usage: v2_bodies.py MODEL_DIR ROWS...
Reads MODEL_DIR/body-ROWS.json ({"data": [[30 floats], ...], "names": [...]}) and writes, for
each ROWS:

  v2-ROWS.json  the V2 JSON request: {"inputs": [{"name": "input", "shape": [ROWS, 30],
                "datatype": "FP64", "data": [flat, row-major]}]}, compact, as tritonclient
                writes JSON inputs (flat data).
  v2-ROWS.bin   the binary tensor request, as tritonclient sends it by default: the JSON header
                {"inputs": [{"name": "input", "shape": [ROWS, 30], "datatype": "FP64",
                "parameters": {"binary_data_size": ROWS * 240}}], "parameters":
                {"binary_data_output": true}} followed by the rows as little-endian float64.
  v2-ROWS.len   the JSON header's length in bytes (the Inference-Header-Content-Length).

The same rows, in the same order, as the ml-deploy body: every endpoint gets the same numbers.
"""
import json
import os
import struct
import sys


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: v2_bodies.py MODEL_DIR ROWS...")
    model_dir = sys.argv[1]
    for rows in sys.argv[2:]:
        with open(os.path.join(model_dir, f"body-{rows}.json")) as f:
            data = json.load(f)["data"]
        width = len(data[0])
        flat = [float(x) for row in data for x in row]
        shape = [len(data), width]
        body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP64", "data": flat}]}
        with open(os.path.join(model_dir, f"v2-{rows}.json"), "w") as out:
            json.dump(body, out, separators=(",", ":"))
        raw = struct.pack(f"<{len(flat)}d", *flat)
        header = {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
        header_bytes = json.dumps(header, separators=(",", ":")).encode()
        with open(os.path.join(model_dir, f"v2-{rows}.bin"), "wb") as out:
            out.write(header_bytes + raw)
        with open(os.path.join(model_dir, f"v2-{rows}.len"), "w") as out:
            out.write(f"{len(header_bytes)}\n")


if __name__ == "__main__":
    main()
