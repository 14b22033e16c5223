"""The Predict codec in use: the compiled one (cext/_predict.pyx), else its pure-Python twin.

The same seam as the frame splitter's (edge_agent.protocol): the twin is the reference the
tests hold the compiled one to, and what a checkout without a build runs;
EDGE_AGENT_PUREPYTHON=1 forces it. Both read and write PredictRequest and PredictResponse
straight from and into wire bytes; edge_agent/protocol/_predict_py.py says what they leave to upb.
plain_inputs is the service's match of decoded inputs to a model's in the common case;
encode_arrays_request and decode_arrays_response the client's common case (NumPy arrays in,
NumPy arrays out), each in one call.
"""
from __future__ import annotations

from edge_agent import pure_python

if pure_python():
    from edge_agent.protocol._predict_py import (decode_arrays_response, decode_request,
                                                 decode_response, encode_arrays_request,
                                                 encode_request, encode_response, plain_inputs)
else:
    try:
        from edge_agent.protocol._predict import (decode_arrays_response, decode_request,
                                                  decode_response, encode_arrays_request,
                                                  encode_request, encode_response, plain_inputs)
    except ModuleNotFoundError as missing:  # no build; a broken or stale one is an error
        if missing.name != "edge_agent.protocol._predict":
            raise
        from edge_agent.protocol._predict_py import (decode_arrays_response, decode_request,
                                                     decode_response, encode_arrays_request,
                                                     encode_request, encode_response,
                                                     plain_inputs)

__all__ = ["decode_arrays_response", "decode_request", "decode_response",
           "encode_arrays_request", "encode_request", "encode_response", "plain_inputs"]
