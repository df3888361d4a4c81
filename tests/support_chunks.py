"""
A chunked body for the backend client's and the relay's tests: what the
backend frames, and what a raw relay hands on.
"""

# Odd sizes, an extension, a chunk whose data holds CRLFs and a "0", trailers.
CHUNKS = [b"a", b"0123456789abcdef" * 3 + b"x", b"\r\n0\r\n\r\n", b"data: {}\n\n"]
FRAMED = (
    b"1\r\na\r\n"
    b"31;name=value\r\n" + CHUNKS[1] + b"\r\n"
    b"7 ; ext\r\n" + CHUNKS[2] + b"\r\n"
    b"A\r\n" + CHUNKS[3] + b"\r\n"
)
LAST = b"0\r\nX-Trailer: yes\r\n\r\n"
# What a raw relay hands on: the size lines with extensions made plain.
RELAYED = FRAMED.replace(b"31;name=value", b"31").replace(b"7 ; ext", b"7")
