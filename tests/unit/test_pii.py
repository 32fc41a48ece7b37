"""PII scrubbing on realistic English and Chinese text, and the look-alikes that must survive."""

from __future__ import annotations

import random

import pytest

from align_kit.data.pii import id_card_check_char, is_valid_id_card, scrub_pii


def test_english_contact_block():
    text = ("Questions? Write to support@acme-tools.co.uk or j.smith+billing@mail.example.org. "
            "US office: (415) 555-0132, toll free 1-800-555-0199; London +44 20 7946 0958. "
            "Our API lives at 203.0.113.42 and 2001:db8:85a3::8a2e:370:7334 (fallback ::ffff:192.0.2.1).")
    out, counts = scrub_pii(text)
    assert counts == {"email": 2, "phone": 3, "ip": 3}
    assert out.startswith("Questions? Write to <EMAIL> or <EMAIL>. US office: <PHONE>, toll free <PHONE>;")
    assert "acme" not in out and "555" not in out and "203.0" not in out and "db8" not in out


def test_chinese_contact_block():
    id_number = "11010519491231002X"
    text = (f"联系人：王先生，手机 138 1234 5678 或 +86 15912345678，座机 010-62345678，"
            f"（0755）2345 6789。邮箱 wang.li@example.cn，身份证号{id_number}，服务器地址192.168.1.20。")
    out, counts = scrub_pii(text)
    assert counts == {"phone": 4, "email": 1, "id_card": 1, "ip": 1}
    assert out == ("联系人：王先生，手机 <PHONE> 或 <PHONE>，座机 <PHONE>，<PHONE>。"
                   "邮箱 <EMAIL>，身份证号<ID_CARD>，服务器地址<IP>。")


@pytest.mark.parametrize("text", [
    "Upgrade to v2.10.1 or Python 3.11.7; version 1.2.3.4 fixed the leak, build 10.0.19045.",
    "版本 4.2.1.0 已发布，请升级到 v1.20.3.4。",
    "The meeting is on 2024-05-01 at 10:30, the invoice dated 05/01/2024.",
    "会议定于2024年5月1日下午3点，截止日期2024-06-30。",
    "The laptop costs $1,299.00 (was $1,499.99); the phone ¥3999, 订单金额￥12,888.00元。",
    "ISBN 978-3-16-148410-0 and ISBN 9783161484100; order no. 202405011234567890123.",
    "订单号：202405011234567，快递单号 SF1234567890123，邮编 100080。",
    "Population grew from 1,234,567 to 7,654,321 between 1990 and 2020; pi is 3.14159265.",
    "随机十八位数字 123456789012345678 不是身份证号。",
])
def test_lookalikes_survive(text):
    out, counts = scrub_pii(text)
    assert (out, sum(counts.values())) == (text, 0)


def test_id_card_checksum_rejects_random_numbers():
    rng = random.Random(0)
    valid = 0
    for _ in range(2000):
        first17 = "110105" + f"{rng.randint(1950, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        first17 += f"{rng.randint(0, 999):03d}"
        check = id_card_check_char(first17)
        assert is_valid_id_card(first17 + check)
        wrong = rng.choice([c for c in "0123456789X" if c != check])
        valid += is_valid_id_card(first17 + wrong)
    assert valid == 0
    # random 18-digit strings: a real date and the check digit are both needed
    hits = sum(is_valid_id_card(str(rng.randrange(10**17, 10**18))) for _ in range(5000))
    assert hits < 25


def test_kinds_can_be_selected():
    out, counts = scrub_pii("a@b.com 13812345678", kinds=("phone",))
    assert out == "a@b.com <PHONE>" and counts == {"phone": 1}
