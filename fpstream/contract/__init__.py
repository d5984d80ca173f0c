"""The wire contract.

``fpstream.contract.schema`` builds the JSON Schemas (draft 2020-12) of every event from the
event dataclasses and the decoder's limits; the files ship in ``schemas/v<N>/``, one per event
and schema version. This package imports nothing on import, so that a consumer of one module
does not pay for the others.
"""
