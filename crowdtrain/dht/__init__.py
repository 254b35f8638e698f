"""DHT layer: node lifecycle, record types, signed documents.

- ``node.py``: address parsing, :func:`start_dht` with our identity and validators, port checks.
- ``records.py``: every DHT record type (keys, schemas, typed values, validation on read).
- ``signing.py``: signed JSON documents and the run id bound to a coordinator key.
- ``publish.py``: storing and reading the run's records (announcement, config, assets, peers).
- ``invited.py``: the validator of a private run (peer and progress records need a valid invite).
"""
