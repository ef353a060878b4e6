#include "core/safetensors.h"

#include <limits>
#include <set>
#include <stdexcept>

namespace blipdiff {

namespace {

// A little recursive-descent reader for the header's JSON: objects, arrays, strings and non-negative integers,
// which is all a safetensors header holds.
class HeaderReader {
 public:
  HeaderReader(const char* text, size_t size) : p_(text), begin_(text), end_(text + size) {}

  void fail(const std::string& what) const {
    throw std::runtime_error("its header is not valid: " + what + " at byte " + std::to_string(p_ - begin_));
  }

  void skip_space() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\t' || *p_ == '\n' || *p_ == '\r')) ++p_;
  }

  bool consume(char c) {
    skip_space();
    if (p_ < end_ && *p_ == c) {
      ++p_;
      return true;
    }
    return false;
  }

  void expect(char c) {
    if (!consume(c)) fail(std::string("expected '") + c + "'");
  }

  bool at_end() {
    skip_space();
    return p_ == end_;
  }

  std::string string() {
    skip_space();
    if (p_ >= end_ || *p_ != '"') fail("expected a string");
    ++p_;
    std::string out;
    while (true) {
      if (p_ >= end_) fail("unterminated string");
      const char c = *p_++;
      if (c == '"') return out;
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
      if (c != '\\') {
        out.push_back(c);
        continue;
      }
      if (p_ >= end_) fail("unterminated escape");
      const char e = *p_++;
      switch (e) {
        case '"': out.push_back('"'); break;
        case '\\': out.push_back('\\'); break;
        case '/': out.push_back('/'); break;
        case 'b': out.push_back('\b'); break;
        case 'f': out.push_back('\f'); break;
        case 'n': out.push_back('\n'); break;
        case 'r': out.push_back('\r'); break;
        case 't': out.push_back('\t'); break;
        case 'u': append_utf8(out, code_point()); break;
        default: fail("unknown escape");
      }
    }
  }

  uint64_t integer() {
    skip_space();
    if (p_ >= end_ || *p_ < '0' || *p_ > '9') fail("expected a non-negative integer");
    uint64_t v = 0;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') {
      const uint64_t digit = static_cast<uint64_t>(*p_ - '0');
      if (v > (std::numeric_limits<uint64_t>::max() - digit) / 10) fail("integer too large");
      v = v * 10 + digit;
      ++p_;
    }
    if (p_ < end_ && (*p_ == '.' || *p_ == 'e' || *p_ == 'E')) fail("expected an integer");
    return v;
  }

  std::vector<uint64_t> integers() {
    std::vector<uint64_t> out;
    expect('[');
    if (consume(']')) return out;
    do {
      out.push_back(integer());
    } while (consume(','));
    expect(']');
    return out;
  }

 private:
  unsigned hex4() {
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      if (p_ >= end_) fail("short \\u escape");
      const char c = *p_++;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else fail("bad \\u escape");
    }
    return v;
  }

  unsigned code_point() {
    unsigned cp = hex4();
    if (cp >= 0xD800 && cp <= 0xDBFF) {  // a surrogate pair
      if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') fail("unpaired surrogate");
      p_ += 2;
      const unsigned low = hex4();
      if (low < 0xDC00 || low > 0xDFFF) fail("unpaired surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
      fail("unpaired surrogate");
    }
    return cp;
  }

  static void append_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  const char* p_;
  const char* begin_;
  const char* end_;
};

// Headers beyond this are refused rather than parsed (safetensors itself caps them at 100 MB).
constexpr uint64_t kMaxHeader = 100ull << 20;

SafetensorsEntry read_entry(HeaderReader& r, std::string name) {
  SafetensorsEntry entry;
  entry.name = std::move(name);
  bool dtype = false, shape = false, offsets = false;
  r.expect('{');
  if (!r.consume('}')) {
    do {
      const std::string key = r.string();
      r.expect(':');
      if (key == "dtype") {
        entry.dtype = r.string();
        dtype = true;
      } else if (key == "shape") {
        for (uint64_t d : r.integers()) {
          if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) r.fail("dimension too large");
          entry.shape.push_back(static_cast<int64_t>(d));
        }
        shape = true;
      } else if (key == "data_offsets") {
        const std::vector<uint64_t> range = r.integers();
        if (range.size() != 2) r.fail("data_offsets must hold two integers");
        entry.begin = range[0];
        entry.end = range[1];
        offsets = true;
      } else {
        r.fail("unknown key \"" + key + "\" in tensor \"" + entry.name + "\"");
      }
    } while (r.consume(','));
    r.expect('}');
  }
  if (!dtype || !shape || !offsets) r.fail("tensor \"" + entry.name + "\" needs dtype, shape and data_offsets");
  return entry;
}

}  // namespace

size_t safetensors_itemsize(const std::string& dtype) {
  if (dtype == "F64" || dtype == "I64") return 8;
  if (dtype == "F32" || dtype == "I32") return 4;
  if (dtype == "F16" || dtype == "BF16" || dtype == "I16") return 2;
  if (dtype == "I8" || dtype == "U8" || dtype == "BOOL") return 1;
  return 0;
}

SafetensorsHeader parse_safetensors_header(const unsigned char* file, uint64_t size) {
  if (size < 8) throw std::runtime_error("it is " + std::to_string(size) + " bytes long, too short for a header");
  uint64_t length = 0;
  for (int i = 7; i >= 0; --i) length = (length << 8) | file[i];
  if (length > kMaxHeader || length > size - 8) {
    throw std::runtime_error("its header length " + std::to_string(length) + " runs past the end of the file (" +
                             std::to_string(size) + " bytes)");
  }
  SafetensorsHeader header;
  header.data_offset = 8 + length;
  const uint64_t data_size = size - header.data_offset;
  HeaderReader r(reinterpret_cast<const char*>(file + 8), length);
  std::set<std::string> names;
  r.expect('{');
  if (!r.consume('}')) {
    do {
      std::string key = r.string();
      r.expect(':');
      if (!names.insert(key).second) r.fail("\"" + key + "\" appears twice");
      if (key == "__metadata__") {
        r.expect('{');
        if (!r.consume('}')) {
          do {
            std::string k = r.string();
            r.expect(':');
            header.metadata[k] = r.string();
          } while (r.consume(','));
          r.expect('}');
        }
        continue;
      }
      header.tensors.push_back(read_entry(r, std::move(key)));
    } while (r.consume(','));
    r.expect('}');
  }
  if (!r.at_end()) r.fail("trailing characters after the header");

  for (const SafetensorsEntry& e : header.tensors) {
    const size_t itemsize = safetensors_itemsize(e.dtype);
    if (itemsize == 0) throw std::runtime_error("tensor \"" + e.name + "\" has an unknown dtype \"" + e.dtype + "\"");
    if (e.begin > e.end || e.end > data_size) {
      throw std::runtime_error("tensor \"" + e.name + "\": data_offsets [" + std::to_string(e.begin) + ", " +
                               std::to_string(e.end) + "] lie outside the " + std::to_string(data_size) +
                               " bytes of data");
    }
    // The element count, bounded by the range so that it cannot overflow (a larger shape is a mismatch).
    const uint64_t limit = (e.end - e.begin) / itemsize + 1;
    uint64_t numel = 1;
    for (int64_t d : e.shape) {
      const auto ud = static_cast<uint64_t>(d);
      numel = (ud != 0 && numel > limit / ud) ? limit : numel * ud;
    }
    if (numel >= limit || e.end - e.begin != numel * itemsize) {
      throw std::runtime_error("tensor \"" + e.name + "\": data_offsets [" + std::to_string(e.begin) + ", " +
                               std::to_string(e.end) + "] hold " + std::to_string(e.end - e.begin) +
                               " bytes, which its dtype " + e.dtype + " and shape do not fill exactly");
    }
  }
  return header;
}

}  // namespace blipdiff
