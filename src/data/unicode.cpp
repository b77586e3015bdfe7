#include "data/unicode.h"

#include <algorithm>
#include <array>
#include <vector>

namespace lrsa::data::unicode {

namespace {

constexpr uint32_t kHangulS = 0xAC00, kHangulL = 0x1100, kHangulV = 0x1161, kHangulT = 0x11A7;
constexpr uint32_t kHangulLCount = 19, kHangulVCount = 21, kHangulTCount = 28;
constexpr uint32_t kHangulNCount = kHangulVCount * kHangulTCount, kHangulSCount = kHangulLCount * kHangulNCount;

// Raw bytes of invalid UTF-8 travel through NFC as kInvalid + byte (starters, never composed).
constexpr uint32_t kRawByteBase = kInvalid;

uint8_t props_from_runs(uint32_t cp) {
  const PropRun* end = kPropRuns + kPropRunCount;
  const PropRun* it = std::upper_bound(kPropRuns, end, cp, [](uint32_t c, const PropRun& r) { return c < r.start; });
  return (it - 1)->props;
}

// The BMP (where nearly all text lives) is looked up directly; other planes by binary search.
const std::array<uint8_t, 0x10000>& bmp_props() {
  static const std::array<uint8_t, 0x10000> table = [] {
    std::array<uint8_t, 0x10000> t{};
    for (size_t r = 0; r < kPropRunCount; ++r) {
      const uint32_t start = kPropRuns[r].start;
      if (start >= 0x10000) break;
      const uint32_t end = r + 1 < kPropRunCount ? std::min<uint32_t>(kPropRuns[r + 1].start, 0x10000) : 0x10000;
      std::fill(t.begin() + start, t.begin() + end, kPropRuns[r].props);
    }
    return t;
  }();
  return table;
}

const Decomposition* find_decomposition(uint32_t cp) {
  const Decomposition* end = kDecompositions + kDecompositionCount;
  const Decomposition* it =
      std::lower_bound(kDecompositions, end, cp, [](const Decomposition& d, uint32_t c) { return d.cp < c; });
  return it != end && it->cp == cp ? it : nullptr;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kHangulS && cp < kHangulS + kHangulSCount) {
    const uint32_t s = cp - kHangulS;
    out.push_back(kHangulL + s / kHangulNCount);
    out.push_back(kHangulV + (s % kHangulNCount) / kHangulTCount);
    if (s % kHangulTCount != 0) out.push_back(kHangulT + s % kHangulTCount);
    return;
  }
  if (const Decomposition* d = cp < kInvalid ? find_decomposition(cp) : nullptr) {
    decompose(d->first, out);
    if (d->second != 0) decompose(d->second, out);
    return;
  }
  out.push_back(cp);
}

// Primary composite of (a, b), or 0.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kHangulL && a < kHangulL + kHangulLCount && b >= kHangulV && b < kHangulV + kHangulVCount)
    return kHangulS + ((a - kHangulL) * kHangulVCount + (b - kHangulV)) * kHangulTCount;
  if (a >= kHangulS && a < kHangulS + kHangulSCount && (a - kHangulS) % kHangulTCount == 0 && b > kHangulT &&
      b < kHangulT + kHangulTCount)
    return a + (b - kHangulT);
  const Composition* end = kCompositions + kCompositionCount;
  const Composition* it = std::lower_bound(kCompositions, end, std::pair{a, b}, [](const Composition& c, auto key) {
    return c.first != key.first ? c.first < key.first : c.second < key.second;
  });
  return it != end && it->first == a && it->second == b ? it->composite : 0;
}

uint8_t ccc_of(uint32_t cp) { return cp < kInvalid ? combining_class(cp) : 0; }

}  // namespace

uint32_t decode_utf8(const unsigned char* p, const unsigned char* end, int& len) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) {
    len = 1;
    return b0;
  }
  // Table 3-7 of the Unicode standard: the valid range of the second byte depends on the first.
  int need;
  unsigned char lo = 0x80, hi = 0xBF;
  uint32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    len = 1;
    return kInvalid;
  }
  int i = 1;
  for (; i <= need; ++i) {
    if (p + i >= end || p[i] < lo || p[i] > hi) {
      len = i;  // the maximal subpart: the bytes that could still have started a valid sequence
      return kInvalid;
    }
    cp = (cp << 6) | (p[i] & 0x3F);
    lo = 0x80;
    hi = 0xBF;
  }
  len = need + 1;
  return cp;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

uint8_t props(uint32_t cp) {
  if (cp < 0x10000) return bmp_props()[cp];
  return cp < kInvalid ? props_from_runs(cp) : uint8_t(kOther);
}

uint8_t combining_class(uint32_t cp) {
  const CccRun* end = kCccRuns + kCccRunCount;
  const CccRun* it = std::upper_bound(kCccRuns, end, cp, [](uint32_t c, const CccRun& r) { return c < r.start; });
  return it == kCccRuns ? 0 : (it - 1)->ccc;
}

bool is_nfc_quick(std::string_view text) {
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    if (*p < 0x80) {  // ASCII is always NFC-safe
      ++p;
      continue;
    }
    int len;
    const uint32_t cp = decode_utf8(p, end, len);
    if (props(cp) & 4) return false;
    p += len;
  }
  return true;
}

namespace {

// NFC of a text whose every character may interact with its neighbours.
std::string nfc_full(std::string_view text) {
  // 1. Full canonical decomposition.
  std::vector<uint32_t> cps;
  cps.reserve(text.size() + 8);
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  while (p < end) {
    int len;
    const uint32_t cp = decode_utf8(p, end, len);
    if (cp == kInvalid) {
      for (int i = 0; i < len; ++i) cps.push_back(kRawByteBase + p[i]);
    } else {
      decompose(cp, cps);
    }
    p += len;
  }
  // 2. Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < cps.size();) {
    if (ccc_of(cps[i]) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < cps.size() && ccc_of(cps[j]) != 0) ++j;
    std::stable_sort(cps.begin() + ptrdiff_t(i), cps.begin() + ptrdiff_t(j),
                     [](uint32_t a, uint32_t b) { return ccc_of(a) < ccc_of(b); });
    i = j;
  }
  // 3. Canonical composition: a character combines with the last starter unless a character
  // between them has class 0 or a class >= its own (it is "blocked").
  std::vector<uint32_t> composed;
  composed.reserve(cps.size());
  ptrdiff_t starter = -1;
  uint8_t last_ccc = 0;
  for (uint32_t cp : cps) {
    const uint8_t ccc = ccc_of(cp);
    if (starter >= 0) {
      const bool adjacent = ptrdiff_t(composed.size()) - 1 == starter;
      if (adjacent || (last_ccc != 0 && last_ccc < ccc)) {
        if (const uint32_t c = compose(composed[size_t(starter)], cp)) {
          composed[size_t(starter)] = c;
          continue;
        }
      }
    }
    if (ccc == 0) starter = ptrdiff_t(composed.size());
    composed.push_back(cp);
    last_ccc = ccc;
  }
  std::string out;
  out.reserve(text.size());
  for (uint32_t cp : composed) {
    if (cp >= kRawByteBase) out += char(cp - kRawByteBase);
    else append_utf8(out, cp);
  }
  return out;
}

}  // namespace

// An NFC-safe character is a starter that never composes with what precedes it, so nothing can
// interact across the boundary before it: only the stretches from the safe character before an
// unsafe one (it may compose with what follows) to the next safe character are normalized.
std::string nfc(std::string_view text) {
  const auto* begin = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = begin + text.size();
  std::string out;
  const unsigned char* emitted = begin;   // text before this is in `out`
  const unsigned char* last_safe = begin;  // start of the last safe character (or `emitted`)
  const unsigned char* p = begin;
  auto is_safe_at = [&](const unsigned char* q, int& len) {
    if (*q < 0x80) {
      len = 1;
      return true;
    }
    return (props(decode_utf8(q, end, len)) & 4) == 0;
  };
  while (p < end) {
    int len;
    if (is_safe_at(p, len)) {
      last_safe = p;
      p += len;
      continue;
    }
    const unsigned char* region_end = p + len;
    while (region_end < end && !is_safe_at(region_end, len)) region_end += len;
    if (out.empty()) out.reserve(text.size() + 16);
    out.append(reinterpret_cast<const char*>(emitted), size_t(last_safe - emitted));
    out += nfc_full(std::string_view(reinterpret_cast<const char*>(last_safe), size_t(region_end - last_safe)));
    emitted = last_safe = p = region_end;
  }
  out.append(reinterpret_cast<const char*>(emitted), size_t(end - emitted));
  return out;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const auto* end = p + bytes.size();
  while (p < end) {
    int len;
    const uint32_t cp = decode_utf8(p, end, len);
    if (cp == kInvalid) out += "\xEF\xBF\xBD";
    else out.append(reinterpret_cast<const char*>(p), size_t(len));
    p += len;
  }
  return out;
}

}  // namespace lrsa::data::unicode
