// CutoverCore speaks of Crypto as part of its own vocabulary (SCRAM, md5); it lives in CutoverNative with the C.
@_exported import CutoverNative
