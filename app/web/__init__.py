"""The web layer every feature's views share; it imports no feature.

`errors`: every failure as a JSON answer. `bodies`: request bodies and their faults. `urls`: the one builder of the
app's own URLs. `auth`: API tokens as bearer credentials, and the principal a request acts as.
"""
