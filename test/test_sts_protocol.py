import pytest
import scservo_sdk as scs

from so101_driver import sts_protocol as sts


@pytest.mark.parametrize('value,bit', [(-100, 15), (100, 15), (0, 15), (-2047, 11), (1023, 10),
                                       (-1023, 10)])
def test_sign_magnitude_matches_the_sdk(value, bit):
    raw = sts.encode_sign_magnitude(value, bit)
    assert raw == scs.SCS_TOSCS(value, bit) if value < 0 else raw == value
    assert sts.decode_sign_magnitude(raw, bit) == scs.SCS_TOHOST(raw, bit) == value


def test_values_that_do_not_fit_are_refused():
    with pytest.raises(ValueError):
        sts.encode_sign_magnitude(2048, 11)
    with pytest.raises(ValueError):
        sts.encode(sts.REGISTERS['torque_enable'], 256)


def test_packets_match_captured_sdk_traces():
    assert sts.packet(1, sts.INST_PING).hex() == 'ffff010201fb'
    params = bytes([0x38, 0x02, 0x01, 0x02])
    assert sts.packet(sts.BROADCAST_ID, sts.INST_SYNC_READ, params).hex() == 'fffffe0682380201023c'
    params = bytes([0x2A, 0x02, 0x01, 0x00, 0x08, 0x02, 0xFF, 0x07])
    assert sts.packet(sts.BROADCAST_ID, sts.INST_SYNC_WRITE, params).hex() == \
        'fffffe0a832a0201000802ff0737'


def test_error_text():
    assert sts.error_text(sts.ERRBIT_OVERHEAT | sts.ERRBIT_OVERLOAD) == 'overheat, overload'
    assert sts.error_text(0) == 'none'
