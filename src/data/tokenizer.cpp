#include "lrsa/data/tokenizer.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <shared_mutex>
#include <sstream>

#include "data/pretokenize.h"
#include "data/unicode.h"
#include "lrsa/core/error.h"

namespace lrsa::data {

namespace {

using json = nlohmann::json;

// The two pre-tokenizer regexes we implement (data/pretokenize.h), exactly as tokenizer.json
// spells them.
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Words longer than this are not cached: they rarely repeat.
constexpr size_t kMaxCachedWordBytes = 128;
constexpr size_t kWordCacheCapacity = 1 << 17;

// Open-addressing hash table from byte strings to uint32 values, keys packed in one arena: the
// encode loop looks up every word (word cache, Llama-3's whole-word vocab check), so lookups
// must not allocate and should touch little memory.
class StringTable {
 public:
  // Keeps the first value when the key exists; returns whether it inserted.
  bool insert(std::string_view key, uint32_t value) {
    if (2 * (size_ + 1) > slots_.size()) grow();
    const uint64_t h = hash(key);
    size_t i = h & mask_;
    for (; slots_[i].used; i = (i + 1) & mask_)
      if (matches(slots_[i], h, key)) return false;
    slots_[i] = Slot{h, uint32_t(arena_.size()), uint32_t(key.size()), value, true};
    arena_.append(key);
    ++size_;
    return true;
  }
  const uint32_t* find(std::string_view key) const {
    if (slots_.empty()) return nullptr;
    const uint64_t h = hash(key);
    for (size_t i = h & mask_; slots_[i].used; i = (i + 1) & mask_)
      if (matches(slots_[i], h, key)) return &slots_[i].value;
    return nullptr;
  }
  size_t size() const { return size_; }

 private:
  struct Slot {
    uint64_t hash = 0;
    uint32_t key_offset = 0, key_length = 0, value = 0;
    bool used = false;
  };
  bool matches(const Slot& s, uint64_t h, std::string_view key) const {
    return s.hash == h && s.key_length == key.size() && std::memcmp(arena_.data() + s.key_offset, key.data(), key.size()) == 0;
  }
  // 8 bytes at a time, multiply-xorshift mixing (words are short; this is not for adversaries).
  static uint64_t hash(std::string_view key) {
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ key.size();
    const char* p = key.data();
    size_t n = key.size();
    for (; n >= 8; p += 8, n -= 8) {
      uint64_t v;
      std::memcpy(&v, p, 8);
      h = (h ^ v) * 0xBF58476D1CE4E5B9ULL;
      h ^= h >> 31;
    }
    uint64_t tail = 0;
    std::memcpy(&tail, p, n);
    h = (h ^ tail) * 0x94D049BB133111EBULL;
    return h ^ (h >> 29);
  }
  void grow() {
    std::vector<Slot> old = std::move(slots_);
    slots_.assign(old.empty() ? 64 : 2 * old.size(), Slot{});
    mask_ = slots_.size() - 1;
    for (const Slot& s : old) {
      if (!s.used) continue;
      size_t i = s.hash & mask_;
      while (slots_[i].used) i = (i + 1) & mask_;
      slots_[i] = s;
    }
  }
  std::vector<Slot> slots_;
  std::string arena_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// GPT-2's byte <-> printable character map used by byte-level vocabularies: printable Latin-1
// bytes stand for themselves, the other 68 bytes for U+0100 onwards, in byte order.
const std::array<int, 324>& unicode_to_byte() {
  static const std::array<int, 324> table = [] {
    std::array<int, 324> t;
    t.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      t[size_t(printable ? b : next++)] = b;
    }
    return t;
  }();
  return table;
}

// A vocabulary token (byte-level characters) as raw bytes; nullopt if a character is not one
// of the 256 byte characters.
std::optional<std::string> byte_level_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  const auto* p = reinterpret_cast<const unsigned char*>(token.data());
  const auto* end = p + token.size();
  while (p < end) {
    int len;
    const uint32_t cp = unicode::decode_utf8(p, end, len);
    if (cp >= unicode_to_byte().size() || unicode_to_byte()[cp] < 0) return std::nullopt;
    out += char(unicode_to_byte()[cp]);
    p += len;
  }
  return out;
}

// Merge ranks keyed by the (left, right) token pair, open addressing: the BPE inner loop does
// one lookup per adjacent pair, so this must not allocate or chase list nodes.
class MergeTable {
 public:
  struct Entry {
    uint64_t key = kEmpty;
    int32_t rank = 0;
    int32_t merged = 0;
  };

  void reserve(size_t count) {
    size_t capacity = 16;
    while (capacity < 2 * count) capacity *= 2;
    slots_.assign(capacity, Entry{});
    mask_ = capacity - 1;
  }
  // Keeps the first (lowest) rank when a pair is listed twice, as HF does.
  void insert(int32_t left, int32_t right, int32_t rank, int32_t merged) {
    const uint64_t key = pack(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return;
      if (slots_[i].key == kEmpty) {
        slots_[i] = Entry{key, rank, merged};
        ++size_;
        return;
      }
    }
  }
  const Entry* find(int32_t left, int32_t right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pack(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      if (slots_[i].key == key) return &slots_[i];
      if (slots_[i].key == kEmpty) return nullptr;
    }
  }
  bool empty() const { return size_ == 0; }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t(0);
  static uint64_t pack(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return size_t(k);
  }
  std::vector<Entry> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

// Added tokens as a byte trie; find() returns the leftmost-longest match (HF's aho-corasick
// LeftmostLongest), skipping special tokens when they are not parsed.
class AddedTokenMatcher {
 public:
  struct Match {
    size_t start = std::string_view::npos;
    size_t length = 0;
    int32_t id = -1;
  };

  void add(std::string_view content, int32_t id, bool special) {
    int32_t node = 0;
    for (unsigned char c : content) {
      int32_t child = child_of(node, c);
      if (child < 0) {
        child = int32_t(nodes_.size());
        nodes_[size_t(node)].children.push_back({c, child});
        nodes_.push_back(Node{});
      }
      node = child;
    }
    nodes_[size_t(node)].id = id;
    nodes_[size_t(node)].special = special;
    first_byte_[static_cast<unsigned char>(content[0])] = true;
  }
  bool empty() const { return nodes_.size() == 1; }

  Match find(std::string_view text, size_t from, bool parse_special) const {
    for (size_t start = from; start < text.size(); ++start) {
      if (!first_byte_[static_cast<unsigned char>(text[start])]) continue;
      Match best;
      int32_t node = 0;
      for (size_t i = start; i < text.size(); ++i) {
        node = child_of(node, static_cast<unsigned char>(text[i]));
        if (node < 0) break;
        const Node& n = nodes_[size_t(node)];
        if (n.id >= 0 && (parse_special || !n.special)) best = Match{start, i + 1 - start, n.id};
      }
      if (best.id >= 0) return best;
    }
    return Match{};
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, int32_t>> children;
    int32_t id = -1;
    bool special = false;
  };
  int32_t child_of(int32_t node, unsigned char c) const {
    for (const auto& [byte, child] : nodes_[size_t(node)].children)
      if (byte == c) return child;
    return -1;
  }
  std::vector<Node> nodes_{Node{}};
  std::array<bool, 256> first_byte_{};
};

// Calls on_text(piece) and on_token(id) for the text between added tokens and the tokens.
template <typename OnText, typename OnToken>
void split_added(const AddedTokenMatcher& matcher, std::string_view text, bool parse_special, OnText&& on_text,
                 OnToken&& on_token) {
  if (matcher.empty()) {
    if (!text.empty()) on_text(text);
    return;
  }
  size_t pos = 0;
  while (pos < text.size()) {
    const AddedTokenMatcher::Match m = matcher.find(text, pos, parse_special);
    const size_t text_end = m.id >= 0 ? m.start : text.size();
    if (text_end > pos) on_text(text.substr(pos, text_end - pos));
    if (m.id < 0) break;
    on_token(m.id);
    pos = m.start + m.length;
  }
}

// SAX reader of tokenizer.json: model.vocab and model.merges (hundreds of thousands of entries)
// go straight into flat lists; everything else becomes a DOM. Building a DOM of the whole file
// (a std::map per object) would triple the load time.
class TokenizerJsonReader : public nlohmann::json_sax<json> {
 public:
  explicit TokenizerJsonReader(const std::string& source) : source_(source) {}

  json root;
  std::vector<std::pair<std::string, int64_t>> vocab;    // byte-level token, id
  std::vector<std::pair<std::string, std::string>> merges;  // byte-level left, right

  bool null() override { return value(json()); }
  bool boolean(bool v) override { return value(v); }
  bool number_integer(number_integer_t v) override { return value(v); }
  bool number_unsigned(number_unsigned_t v) override { return value(v); }
  bool number_float(number_float_t v, const string_t&) override { return value(v); }
  bool binary(binary_t& v) override { return value(json::binary(v)); }
  bool string(string_t& v) override {
    if (mode_ == Mode::Merges && depth_ == merges_depth_) {
      const size_t space = v.find(' ');
      LRSA_CHECK(space != std::string::npos && v.find(' ', space + 1) == std::string::npos,
                 "tokenizer '{}': model.merges[{}] '{}' is not two tokens separated by one space", source_,
                 merges.size(), v);
      merges.emplace_back(v.substr(0, space), v.substr(space + 1));
      return true;
    }
    if (mode_ == Mode::Merges) {
      pair_.push_back(std::move(v));
      return true;
    }
    return value(std::move(v));
  }
  bool key(string_t& k) override {
    if (mode_ == Mode::Dom) keys_[size_t(depth_)] = k;
    else key_ = std::move(k);
    return true;
  }
  bool start_object(std::size_t) override {
    ++depth_;
    if (mode_ == Mode::Dom && depth_ == 3 && on_model_path("vocab")) {
      mode_ = Mode::Vocab;
      return true;
    }
    LRSA_CHECK(mode_ == Mode::Dom, "tokenizer '{}': model.{} holds an unexpected object", source_,
               mode_ == Mode::Vocab ? "vocab" : "merges");
    return open(json::object());
  }
  bool end_object() override {
    --depth_;
    if (mode_ == Mode::Vocab) mode_ = Mode::Dom;
    else stack_.pop_back();
    return true;
  }
  bool start_array(std::size_t) override {
    ++depth_;
    if (mode_ == Mode::Dom && depth_ == 3 && on_model_path("merges")) {
      mode_ = Mode::Merges;
      merges_depth_ = depth_;
      return true;
    }
    if (mode_ == Mode::Merges) {
      LRSA_CHECK(depth_ == merges_depth_ + 1, "tokenizer '{}': model.merges[{}] is nested too deeply", source_,
                 merges.size());
      pair_.clear();
      return true;
    }
    LRSA_CHECK(mode_ == Mode::Dom, "tokenizer '{}': model.vocab holds an array", source_);
    return open(json::array());
  }
  bool end_array() override {
    --depth_;
    if (mode_ == Mode::Merges) {
      if (depth_ < merges_depth_) {
        mode_ = Mode::Dom;
        return true;
      }
      LRSA_CHECK(pair_.size() == 2, "tokenizer '{}': model.merges[{}] is neither \"a b\" nor [\"a\", \"b\"]",
                 source_, merges.size());
      merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
      return true;
    }
    stack_.pop_back();
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) override {
    fail("tokenizer '{}': invalid JSON: {}", source_, e.what());
  }

 private:
  enum class Mode { Dom, Vocab, Merges };

  // The container just opened at depth 3 is root["model"][name].
  bool on_model_path(const char* name) const { return stack_.size() == 2 && keys_[1] == "model" && keys_[2] == name; }

  bool value(json&& v) {
    if (mode_ == Mode::Vocab) {
      LRSA_CHECK(v.is_number_integer(), "tokenizer '{}': model.vocab['{}'] is not an integer id", source_, key_);
      vocab.emplace_back(std::move(key_), v.get<int64_t>());
      return true;
    }
    LRSA_CHECK(mode_ == Mode::Dom, "tokenizer '{}': model.merges[{}] holds a non-string", source_, merges.size());
    attach(std::move(v), depth_);
    return true;
  }
  // Adds v to the container open at `parent_depth` (or makes it the root); returns where it is.
  json* attach(json&& v, int parent_depth) {
    if (stack_.empty()) {
      root = std::move(v);
      return &root;
    }
    json& parent = *stack_.back();
    if (parent.is_object()) return &(parent[keys_[size_t(parent_depth)]] = std::move(v));
    parent.push_back(std::move(v));
    return &parent.back();
  }
  bool open(json&& container) {
    LRSA_CHECK(depth_ < int(keys_.size()), "tokenizer '{}': JSON nested deeper than {}", source_, keys_.size());
    stack_.push_back(attach(std::move(container), depth_ - 1));
    return true;
  }

  const std::string& source_;
  Mode mode_ = Mode::Dom;
  int depth_ = 0;  // nesting of the container being filled (root object = 1)
  int merges_depth_ = 0;
  std::array<std::string, 64> keys_;  // keys_[d]: current key of the object at depth d
  std::string key_;
  std::vector<std::string> pair_;
  std::vector<json*> stack_;
};

// Working memory of one BPE word, reused across the words of an encode call.
struct BpeScratch {
  struct Candidate {
    int32_t rank, pos, left, right, merged;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<int32_t> ids, prev, next;
  std::vector<Candidate> heap;
};

}  // namespace

struct Tokenizer::Impl {
  std::string source;
  std::vector<std::string> token_bytes;  // [vocab_size]: raw bytes (added tokens: content)
  std::vector<uint8_t> token_kind;       // 0 unused id, 1 model token, 2 added, 3 added special
  StringTable vocab;                     // model token bytes -> id
  StringTable added;                     // added token content -> id
  std::array<int32_t, 256> byte_ids{};
  MergeTable merges;
  bool nfc = false;
  bool ignore_merges = false;
  PreTokenizer pretokenizer = PreTokenizer::None;
  AddedTokenMatcher added_raw;         // matched before normalization
  AddedTokenMatcher added_normalized;  // matched in normalized text

  // Word cache: word bytes -> offset in cache_ids of [count, id...].
  mutable std::shared_mutex cache_mutex;
  mutable StringTable cache;
  mutable std::vector<int32_t> cache_ids;

  void add_token(int32_t id, std::string bytes, uint8_t kind) {
    if (size_t(id) >= token_bytes.size()) {
      token_bytes.resize(size_t(id) + 1);
      token_kind.resize(size_t(id) + 1, 0);
    }
    token_bytes[size_t(id)] = std::move(bytes);
    token_kind[size_t(id)] = kind;
  }

  void bpe(std::string_view word, BpeScratch& s, std::vector<int32_t>& out) const;
  void encode_word(std::string_view word, BpeScratch& s, std::vector<int32_t>& out) const;
  void encode_normalized(std::string_view text, bool parse_special, BpeScratch& s, std::vector<int32_t>& out) const;
};

// Rank-ordered merging with a heap of candidate pairs over a linked list of symbols:
// O(n log n) for a word of n bytes. Ties go to the leftmost pair, as in HF.
void Tokenizer::Impl::bpe(std::string_view word, BpeScratch& s, std::vector<int32_t>& out) const {
  const int32_t n = int32_t(word.size());
  s.ids.resize(size_t(n));
  s.prev.resize(size_t(n));
  s.next.resize(size_t(n));
  s.heap.clear();
  auto push_candidate = [&](int32_t pos, int32_t left, int32_t right) {
    if (const MergeTable::Entry* e = merges.find(left, right)) {
      s.heap.push_back({e->rank, pos, left, right, e->merged});
      std::push_heap(s.heap.begin(), s.heap.end(), std::greater<>{});
    }
  };
  for (int32_t i = 0; i < n; ++i) {
    s.ids[size_t(i)] = byte_ids[static_cast<unsigned char>(word[size_t(i)])];
    s.prev[size_t(i)] = i - 1;
    s.next[size_t(i)] = i + 1 < n ? i + 1 : -1;
  }
  for (int32_t i = 0; i + 1 < n; ++i) push_candidate(i, s.ids[size_t(i)], s.ids[size_t(i) + 1]);
  while (!s.heap.empty()) {
    std::pop_heap(s.heap.begin(), s.heap.end(), std::greater<>{});
    const BpeScratch::Candidate c = s.heap.back();
    s.heap.pop_back();
    // Stale candidates: a symbol's id only changes by growing, so equal ids mean the pair is
    // still there.
    if (s.ids[size_t(c.pos)] != c.left) continue;
    const int32_t right = s.next[size_t(c.pos)];
    if (right < 0 || s.ids[size_t(right)] != c.right) continue;
    s.ids[size_t(c.pos)] = c.merged;
    s.ids[size_t(right)] = -1;
    const int32_t after = s.next[size_t(right)];
    s.next[size_t(c.pos)] = after;
    if (after >= 0) s.prev[size_t(after)] = c.pos;
    const int32_t before = s.prev[size_t(c.pos)];
    if (before >= 0) push_candidate(before, s.ids[size_t(before)], c.merged);
    if (after >= 0) push_candidate(c.pos, c.merged, s.ids[size_t(after)]);
  }
  for (int32_t i = 0; i >= 0; i = s.next[size_t(i)]) out.push_back(s.ids[size_t(i)]);
}

void Tokenizer::Impl::encode_word(std::string_view word, BpeScratch& s, std::vector<int32_t>& out) const {
  if (word.size() == 1 || merges.empty()) {
    for (unsigned char c : word) out.push_back(byte_ids[c]);
    return;
  }
  if (ignore_merges) {
    if (const uint32_t* id = vocab.find(word)) {
      out.push_back(int32_t(*id));
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::shared_lock lock(cache_mutex);
    if (const uint32_t* at = cache.find(word)) {
      const int32_t* entry = cache_ids.data() + *at;
      out.insert(out.end(), entry + 1, entry + 1 + entry[0]);
      return;
    }
  }
  const size_t first = out.size();
  bpe(word, s, out);
  if (cacheable) {
    // Never wait for the lock: a word that is not cached now is simply merged again later.
    std::unique_lock lock(cache_mutex, std::try_to_lock);
    if (lock.owns_lock() && cache.size() < kWordCacheCapacity && cache.insert(word, uint32_t(cache_ids.size()))) {
      cache_ids.push_back(int32_t(out.size() - first));
      cache_ids.insert(cache_ids.end(), out.begin() + ptrdiff_t(first), out.end());
    }
  }
}

void Tokenizer::Impl::encode_normalized(std::string_view text, bool parse_special, BpeScratch& s,
                                        std::vector<int32_t>& out) const {
  split_added(
      added_normalized, text, parse_special,
      [&](std::string_view piece) {
        pretokenize(piece, pretokenizer, [&](std::string_view word) { encode_word(word, s, out); });
      },
      [&](int32_t id) { out.push_back(id); });
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& spec) {
  if (spec == "bytes") return byte_level();
  return from_file(spec);
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  LRSA_CHECK(file, "tokenizer: cannot open '{}'", path);
  std::stringstream buffer;
  buffer << file.rdbuf();
  return from_json_text(buffer.str(), path);
}

Tokenizer Tokenizer::byte_level() {
  auto impl = std::make_unique<Impl>();
  impl->source = "bytes";
  for (int b = 0; b < 256; ++b) {
    impl->byte_ids[size_t(b)] = b;
    impl->add_token(b, std::string(1, char(b)), 1);
    impl->vocab.insert(std::string(1, char(b)), uint32_t(b));
  }
  int32_t id = 256;
  for (const char* special : {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}) {
    impl->add_token(id, special, 3);
    impl->added.insert(special, uint32_t(id));
    impl->added_raw.add(special, id, true);
    ++id;
  }
  return Tokenizer(std::move(impl));
}

Tokenizer Tokenizer::from_json_text(std::string_view json_text, const std::string& source) {
  TokenizerJsonReader reader(source);
  json::sax_parse(json_text, &reader);
  const json& root = reader.root;
  auto impl = std::make_unique<Impl>();
  impl->source = source;
  auto unsupported = [&](std::string_view field, const json& value) {
    fail("tokenizer '{}': unsupported {}: {} (supported: byte-level BPE as in Qwen2/Qwen3 and Llama-3)", source,
         field, value.dump());
  };
  try {
    const json& model = root.at("model");
    if (model.value("type", std::string("BPE")) != "BPE") unsupported("model.type", model.at("type"));
    for (const char* field : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"}) {
      const json& v = model.contains(field) ? model[field] : json();
      if (!v.is_null() && !(v.is_string() && v.get<std::string>().empty())) unsupported(std::string("model.") + field, v);
    }
    if (model.value("byte_fallback", false)) unsupported("model.byte_fallback", model.at("byte_fallback"));
    impl->ignore_merges = model.value("ignore_merges", false);

    const json& normalizer = root.contains("normalizer") ? root["normalizer"] : json();
    if (!normalizer.is_null()) {
      if (normalizer.value("type", "") != "NFC") unsupported("normalizer", normalizer);
      impl->nfc = true;
    }

    // Sequence[Split(regex, Isolated), ByteLevel(use_regex=false)]
    const json& pre = root.at("pre_tokenizer");
    const bool shape_ok = pre.value("type", "") == "Sequence" && pre.at("pretokenizers").size() == 2 &&
                          pre["pretokenizers"][0].value("type", "") == "Split" &&
                          pre["pretokenizers"][0].value("behavior", "") == "Isolated" &&
                          !pre["pretokenizers"][0].value("invert", false) &&
                          pre["pretokenizers"][1].value("type", "") == "ByteLevel" &&
                          !pre["pretokenizers"][1].value("use_regex", true) &&
                          !pre["pretokenizers"][1].value("add_prefix_space", true);
    if (!shape_ok) unsupported("pre_tokenizer", pre);
    const json& pattern = pre["pretokenizers"][0].at("pattern");
    const std::string regex = pattern.value("Regex", "");
    if (regex == kQwen2Regex) impl->pretokenizer = PreTokenizer::Qwen2;
    else if (regex == kLlama3Regex) impl->pretokenizer = PreTokenizer::Llama3;
    else unsupported("pre_tokenizer split pattern", pattern);

    const json& decoder = root.contains("decoder") ? root["decoder"] : json();
    if (decoder.value("type", "") != "ByteLevel") unsupported("decoder", decoder);

    // Vocabulary: byte-level characters -> raw bytes.
    LRSA_CHECK(!reader.vocab.empty(), "tokenizer '{}': model.vocab is missing or empty", source);
    for (auto& [token, id] : reader.vocab) {
      std::optional<std::string> bytes = byte_level_to_bytes(token);
      LRSA_CHECK(bytes, "tokenizer '{}': model.vocab token '{}' is not byte-level", source, token);
      LRSA_CHECK(id >= 0 && id < (int64_t(1) << 30), "tokenizer '{}': model.vocab token '{}' has id {}", source,
                 token, id);
      LRSA_CHECK(impl->vocab.insert(*bytes, uint32_t(id)), "tokenizer '{}': model.vocab lists '{}' twice", source,
                 token);
      impl->add_token(int32_t(id), std::move(*bytes), 1);
    }
    for (int b = 0; b < 256; ++b) {
      const uint32_t* id = impl->vocab.find(std::string(1, char(b)));
      LRSA_CHECK(id, "tokenizer '{}': model.vocab lacks the token of byte 0x{:02X}", source, b);
      impl->byte_ids[size_t(b)] = int32_t(*id);
    }

    // Merges ("a b" strings in older files, ["a", "b"] pairs in newer): rank = list position.
    impl->merges.reserve(reader.merges.size());
    std::string merged;
    for (size_t rank = 0; rank < reader.merges.size(); ++rank) {
      const auto& [left, right] = reader.merges[rank];
      auto id_of = [&](const std::string& token) {
        std::optional<std::string> bytes = byte_level_to_bytes(token);
        const uint32_t* id = bytes ? impl->vocab.find(*bytes) : nullptr;
        LRSA_CHECK(id, "tokenizer '{}': model.merges[{}] uses '{}', which is not in the vocab", source, rank, token);
        return int32_t(*id);
      };
      merged.assign(left).append(right);
      const int32_t left_id = id_of(left), right_id = id_of(right), merged_id = id_of(merged);
      impl->merges.insert(left_id, right_id, int32_t(rank), merged_id);
    }

    for (const json& t : root.at("added_tokens")) {
      const int32_t id = t.at("id").get<int32_t>();
      const std::string content = t.at("content").get<std::string>();
      LRSA_CHECK(!content.empty(), "tokenizer '{}': added token {} is empty", source, id);
      for (const char* flag : {"lstrip", "rstrip", "single_word"})
        if (t.value(flag, false)) unsupported(fmt::format("added token '{}' flag", content), json{{flag, true}});
      const bool special = t.value("special", false);
      impl->add_token(id, content, special ? 3 : 2);
      LRSA_CHECK(impl->added.insert(content, uint32_t(id)), "tokenizer '{}': added token '{}' is listed twice", source,
                 content);
      (t.value("normalized", !special) ? impl->added_normalized : impl->added_raw).add(content, id, special);
    }
  } catch (const json::exception& e) {
    fail("tokenizer '{}': {}", source, e.what());
  }
  return Tokenizer(std::move(impl));
}

void Tokenizer::encode_append(std::string_view text, bool parse_special, std::vector<int32_t>& out) const {
  const Impl& impl = *impl_;
  BpeScratch scratch;
  split_added(
      impl.added_raw, text, parse_special,
      [&](std::string_view piece) {
        if (impl.nfc && !unicode::is_nfc_quick(piece)) {
          impl.encode_normalized(unicode::nfc(piece), parse_special, scratch, out);
        } else {
          impl.encode_normalized(piece, parse_special, scratch, out);
        }
      },
      [&](int32_t id) { out.push_back(id); });
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  encode_append(text, parse_special, ids);
  return ids;
}

std::string_view Tokenizer::token_bytes(int32_t id) const {
  LRSA_CHECK(id >= 0 && size_t(id) < impl_->token_kind.size() && impl_->token_kind[size_t(id)] != 0,
             "tokenizer '{}': unknown token id {} (vocab size {})", impl_->source, id, vocab_size());
  return impl_->token_bytes[size_t(id)];
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    const std::string_view b = token_bytes(id);
    if (!(skip_special && is_special(id))) bytes += b;
  }
  return unicode::utf8_lossy(bytes);
}

std::optional<int32_t> Tokenizer::find_token(std::string_view text) const {
  if (const uint32_t* id = impl_->added.find(text)) return int32_t(*id);
  if (const uint32_t* id = impl_->vocab.find(text)) return int32_t(*id);
  return std::nullopt;
}

int32_t Tokenizer::token_id(std::string_view text) const {
  const std::optional<int32_t> id = find_token(text);
  LRSA_CHECK(id, "tokenizer '{}' has no token '{}'", impl_->source, text);
  return *id;
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && size_t(id) < impl_->token_kind.size() && impl_->token_kind[size_t(id)] == 3;
}

int64_t Tokenizer::vocab_size() const { return int64_t(impl_->token_kind.size()); }

const std::string& Tokenizer::source() const { return impl_->source; }

std::string StreamDecoder::push(int32_t id) {
  if (skip_special_ && tokenizer_.is_special(id)) return {};
  pending_ += tokenizer_.token_bytes(id);
  // Emit everything up to a trailing sequence that is a valid but unfinished character.
  const auto* begin = reinterpret_cast<const unsigned char*>(pending_.data());
  const auto* end = begin + pending_.size();
  const unsigned char* p = begin;
  const unsigned char* keep_from = end;
  while (p < end) {
    int len;
    const uint32_t cp = unicode::decode_utf8(p, end, len);
    // A valid lead byte whose sequence runs into the end may still be completed.
    if (cp == unicode::kInvalid && p + len == end && *p >= 0xC2 && *p <= 0xF4) {
      keep_from = p;
      break;
    }
    p += len;
  }
  std::string out = unicode::utf8_lossy(std::string_view(pending_).substr(0, size_t(keep_from - begin)));
  pending_.erase(0, size_t(keep_from - begin));
  return out;
}

std::string StreamDecoder::finish() {
  std::string out = unicode::utf8_lossy(pending_);
  pending_.clear();
  return out;
}

}  // namespace lrsa::data
