"""The 64 hexagrams: six lines (bottom to top) as a binary string, King Wen order.

A hexagram is a lower trigram (lines 1-3: stability, efficiency, learning activity, the
agent's own runtime) under an upper trigram (lines 4-6: routing, collaboration, governance,
how it works with the world). Names are tone-less pinyin; a homonym of an earlier
hexagram carries its King Wen number (``qian15``). The seed's eight names are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .lines import LineSignal

__all__ = ("CORE_HEXAGRAMS", "HEXAGRAMS", "TRIGRAMS", "Hexagram", "HexagramState", "hexagram", "identify_hexagram")

# trigram name -> bits, bottom to top
TRIGRAMS: dict[str, str] = {
    "qian": "111", "dui": "110", "li": "101", "zhen": "100", "xun": "011", "kan": "010", "gen": "001", "kun": "000",
}
_ORDER = ("qian", "zhen", "kan", "gen", "kun", "xun", "li", "dui")
# King Wen number by upper trigram (row) and lower trigram (column, in _ORDER)
_KING_WEN = {
    "qian": (1, 25, 6, 33, 12, 44, 13, 10),
    "zhen": (34, 51, 40, 62, 16, 32, 55, 54),
    "kan": (5, 3, 29, 39, 8, 48, 63, 60),
    "gen": (26, 27, 4, 52, 23, 18, 22, 41),
    "kun": (11, 24, 7, 15, 2, 46, 36, 19),
    "xun": (9, 42, 59, 53, 20, 57, 37, 61),
    "li": (14, 21, 64, 56, 35, 50, 30, 38),
    "dui": (43, 17, 47, 31, 45, 28, 49, 58),
}
# King Wen number -> (name, pinyin, characters)
_NAMES = {
    1: ("qian", "Qián", "乾"), 2: ("kun", "Kūn", "坤"), 3: ("zhun", "Zhūn", "屯"), 4: ("meng", "Méng", "蒙"),
    5: ("xu", "Xū", "需"), 6: ("song", "Sòng", "讼"), 7: ("shi", "Shī", "师"), 8: ("bi", "Bǐ", "比"),
    9: ("xiao_chu", "Xiǎo Chù", "小畜"), 10: ("lu", "Lǚ", "履"), 11: ("tai", "Tài", "泰"), 12: ("pi", "Pǐ", "否"),
    13: ("tong_ren", "Tóng Rén", "同人"), 14: ("da_you", "Dà Yǒu", "大有"), 15: ("qian15", "Qiān", "谦"),
    16: ("yu", "Yù", "豫"), 17: ("sui", "Suí", "随"), 18: ("gu", "Gǔ", "蛊"), 19: ("lin", "Lín", "临"),
    20: ("guan", "Guān", "观"), 21: ("shi_ke", "Shì Kè", "噬嗑"), 22: ("bi22", "Bì", "贲"), 23: ("bo", "Bō", "剥"),
    24: ("fu", "Fù", "复"), 25: ("wu_wang", "Wú Wàng", "无妄"), 26: ("da_chu", "Dà Chù", "大畜"), 27: ("yi", "Yí", "颐"),
    28: ("da_guo", "Dà Guò", "大过"), 29: ("kan", "Kǎn", "坎"), 30: ("li", "Lí", "离"), 31: ("xian", "Xián", "咸"),
    32: ("heng", "Héng", "恒"), 33: ("dun", "Dùn", "遁"), 34: ("da_zhuang", "Dà Zhuàng", "大壮"), 35: ("jin", "Jìn", "晋"),
    36: ("ming_yi", "Míng Yí", "明夷"), 37: ("jia_ren", "Jiā Rén", "家人"), 38: ("kui", "Kuí", "睽"),
    39: ("jian", "Jiǎn", "蹇"), 40: ("xie", "Xiè", "解"), 41: ("sun", "Sǔn", "损"), 42: ("yi42", "Yì", "益"),
    43: ("guai", "Guài", "夬"), 44: ("gou", "Gòu", "姤"), 45: ("cui", "Cuì", "萃"), 46: ("sheng", "Shēng", "升"),
    47: ("kun47", "Kùn", "困"), 48: ("jing", "Jǐng", "井"), 49: ("ge", "Gé", "革"), 50: ("ding", "Dǐng", "鼎"),
    51: ("zhen", "Zhèn", "震"), 52: ("gen", "Gèn", "艮"), 53: ("jian53", "Jiàn", "渐"), 54: ("gui_mei", "Guī Mèi", "归妹"),
    55: ("feng", "Fēng", "丰"), 56: ("lu56", "Lǚ", "旅"), 57: ("xun", "Xùn", "巽"), 58: ("dui", "Duì", "兑"),
    59: ("huan", "Huàn", "涣"), 60: ("jie", "Jié", "节"), 61: ("zhong_fu", "Zhōng Fú", "中孚"),
    62: ("xiao_guo", "Xiǎo Guò", "小过"), 63: ("jiji", "Jì Jì", "既济"), 64: ("weiji", "Wèi Jì", "未济"),
}
# The seed's display names of its eight core states, kept verbatim.
_SEED_DISPLAY = {"jiji": "Ji Ji / 既济", "weiji": "Wei Ji / 未济"}


@dataclass(frozen=True)
class Hexagram:
    """One of the 64: King Wen ``number``, ``name``, ``pinyin``, ``characters``, trigrams."""

    binary: str
    number: int
    name: str
    pinyin: str
    characters: str
    lower: str
    upper: str

    @property
    def display_name(self) -> str:
        if self.name in _SEED_DISPLAY:
            return _SEED_DISPLAY[self.name]
        plain = self.pinyin.translate(str.maketrans("āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜĀÁǍÀ", "aaaaeeeeiiiioooouuuuuuuuAAAA"))
        return f"{plain} / {self.characters}"


def _build() -> dict[str, Hexagram]:
    table = {}
    for upper, row in _KING_WEN.items():
        for lower, number in zip(_ORDER, row):
            binary = TRIGRAMS[lower] + TRIGRAMS[upper]
            table[binary] = Hexagram(binary, number, *_NAMES[number], lower=lower, upper=upper)
    return table


HEXAGRAMS: dict[str, Hexagram] = _build()
CORE_HEXAGRAMS: dict[str, str] = {  # the seed's eight core states, binary bottom -> top
    "111111": "qian", "000000": "kun", "100100": "zhen", "010010": "kan",
    "000001": "bo", "100000": "fu", "101010": "jiji", "010101": "weiji",
}


def hexagram(binary: str) -> Hexagram:
    """The hexagram of a six-character ``0``/``1`` string (bottom line first)."""
    return HEXAGRAMS[binary]


@dataclass(frozen=True)
class HexagramState:
    """The current hexagram, its moving lines, and the changed hexagram they lead to."""

    binary: str
    name: str
    display_name: str
    moving_lines: tuple[int, ...]
    changed_binary: str
    changed_name: str
    changed_display_name: str
    number: int = 0
    changed_number: int = 0

    @property
    def is_core_state(self) -> bool:
        return self.binary in CORE_HEXAGRAMS

    @property
    def hexagram(self) -> Hexagram:
        return HEXAGRAMS[self.binary]

    @property
    def changed(self) -> Hexagram:
        return HEXAGRAMS[self.changed_binary]

    def as_dict(self) -> dict:
        h, c = self.hexagram, self.changed
        return {"binary": self.binary, "number": h.number, "name": h.name, "pinyin": h.pinyin,
                "characters": h.characters, "display_name": h.display_name, "lower": h.lower, "upper": h.upper,
                "moving_lines": list(self.moving_lines), "changed_binary": c.binary, "changed_number": c.number,
                "changed_name": c.name, "changed_display_name": c.display_name}


def identify_hexagram(lines: Sequence[LineSignal]) -> HexagramState:
    """The state of six lines (one per position 1..6); moving lines flip in the changed one."""
    lines = sorted(lines, key=lambda line: line.position)
    if len(lines) != 6:
        raise ValueError(f"identify_hexagram needs exactly 6 lines, got {len(lines)}")
    if [line.position for line in lines] != [1, 2, 3, 4, 5, 6]:
        raise ValueError(f"identify_hexagram needs one line for each position 1..6, got {[l.position for l in lines]}")
    bits = [str(line.bit) for line in lines]
    moving = tuple(line.position for line in lines if line.moving)
    changed = [("0" if b == "1" else "1") if i + 1 in moving else b for i, b in enumerate(bits)]
    now, then = HEXAGRAMS["".join(bits)], HEXAGRAMS["".join(changed)]
    return HexagramState(now.binary, now.name, now.display_name, moving, then.binary, then.name,
                         then.display_name, now.number, then.number)
