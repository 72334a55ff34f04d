"""The error tree is the contract between the library and the transport edges."""

import grpc
import pytest

from reelvault import errors


def all_error_classes() -> list[type[errors.ReelvaultError]]:
    return [getattr(errors, name) for name in errors.__all__]


@pytest.mark.parametrize("cls", all_error_classes(), ids=lambda c: c.__name__)
def test_every_error_names_a_real_grpc_status_and_an_http_code(cls):
    assert issubclass(cls, errors.ReelvaultError)
    assert cls.grpc_status in grpc.StatusCode.__members__
    assert 400 <= cls.http_status <= 599


def test_crypto_failures_are_opaque_and_map_to_data_loss():
    a = errors.DecryptionError("frame tag mismatch")
    b = errors.DecryptionError("key commitment mismatch")
    assert str(a) == str(b)
    assert "tag" not in str(a) and "commitment" not in str(a)
    assert a.reason == "frame tag mismatch"
    assert a.grpc_status == "DATA_LOSS"
    assert isinstance(a, errors.IntegrityError)


def test_missing_and_foreign_are_the_same_error():
    # Another tenant's object must be indistinguishable from a missing one: one class.
    assert errors.NotFound().grpc_status == "NOT_FOUND"
    assert errors.NotFound().http_status == 404


def test_out_of_range_is_an_invalid_argument_with_its_own_codes():
    err = errors.OutOfRange()
    assert isinstance(err, errors.InvalidArgument)
    assert (err.grpc_status, err.http_status) == ("OUT_OF_RANGE", 416)
