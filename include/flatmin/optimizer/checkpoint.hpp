#pragma once
/// @file checkpoint.hpp
/// The checkpoint format (version 2) that `sharpness_aware::save()` writes and `load()` reads.
///
/// Every integer is little-endian; a string is a u32 length n and n bytes (no terminator).
///
///     bytes   field
///     8       magic "FLATMIN2"
///     4       format version (u32) = 2
///     1       element type: 'f' (IEEE 754 binary)
///     1       size of the state type S: 4 or 8
///     1       code of the weight type W, 0 when W, G and S are one type: its size in bytes for
///             float (4) and double (8), 2 for IEEE binary16 (half), 0x82 for bfloat16
///     1       code of the gradient type G, the same way
///     4 + n   composition identity, n <= 4096, e.g.
///             "sharpness_aware<l2, fisher(block=128, source=accumulated), adamw, standard, none>"
///     8       parameter count N (u64)
///     4       tensor count K (u32), then K times:
///               4 + n  name    8  size (u64)    4  flags (u32, `tensor_flags` bits)
///     8       applied steps (u64), at most 2^53
///     4       state entry count E (u32), then E times, in the order the states' visit() lists them:
///               4 + n  entry name (e.g. "exp_avg", "fisher.bits", "adam.beta2")
///               1      element code: 'f' float, 'u' unsigned integer, 'b' bool
///               1      element size in bytes
///               2      reserved, 0
///               8      count c (u64): the buffer's entries, 1 for a scalar
///               c × size  the values
///     4       CRC-32C (Castagnoli) of every preceding byte, magic included
///
/// Reading is bounded by what the reading optimizer expects: every length and count is compared
/// with the expected one before anything proportional to it is allocated or read, so a corrupt
/// or hostile file costs at most the optimizer's own state size in memory. Values are read into
/// host temporaries, checked (the states' `check_load()`), copied to the backend, and only then
/// committed with swaps and plain assignments, which cannot throw: a failed load() leaves the
/// optimizer as it was. Fuzzing builds (`FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION`) skip the CRC
/// comparison, so that the fuzzer reaches the content checks behind it.
///
/// What a policy gives the format: a static `name` (a policy without one is "unnamed"). Its
/// state may add `identity(policy)` (the name with the options that size the state), `visit(f)`
/// (calls f(name, value) for each backend vector and each unsigned / double / bool scalar to
/// save), `check_load(staged)` (throws std::invalid_argument on contents the state cannot have
/// produced; a mask's returns what its `after_load(loaded&) noexcept` commits, and the
/// saved-weights size as `saved_size`). An `optional_entry` (concepts/state_entry.hpp) is written
/// only when its vector is not empty; a file without it loads and empties the vector, so adding
/// one keeps the format at version 2 (older files, which never have it, still load).

#include <algorithm>
#include <any>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <istream>
#include <memory>
#include <ostream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "../concepts/state_entry.hpp"
#include "../numeric/bfloat16.hpp"

namespace flatmin::checkpoint {

namespace detail {
constexpr std::array<std::uint32_t, 256> make_crc32c_table() {
  std::array<std::uint32_t, 256> t{};
  for (std::uint32_t i = 0; i < 256; ++i) {
    std::uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    t[i] = c;
  }
  return t;
}
inline constexpr std::array<std::uint32_t, 256> crc32c_table = make_crc32c_table();
}  // namespace detail

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven and portable.
class crc32c {
 public:
  void update(const void* data, std::size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < n; ++i)
      state_ = detail::crc32c_table[(state_ ^ p[i]) & 0xffu] ^ (state_ >> 8);
  }
  std::uint32_t value() const { return state_ ^ 0xffffffffu; }
  static std::uint32_t of(const void* data, std::size_t n) {
    crc32c c;
    c.update(data, n);
    return c.value();
  }

 private:
  std::uint32_t state_ = 0xffffffffu;
};

inline constexpr char magic_v2[8] = {'F', 'L', 'A', 'T', 'M', 'I', 'N', '2'};
inline constexpr char magic_v1[8] = {'F', 'L', 'A', 'T', 'M', 'I', 'N', '1'};
inline constexpr std::uint32_t format_version = 2;
/// Longest composition identity and tensor name a checkpoint may carry.
inline constexpr std::uint32_t max_string = 4096;
/// Largest step count accepted: step numbers stay exact in double (schedules, bias corrections)
/// and step + 1 cannot wrap.
inline constexpr std::uint64_t max_steps = std::uint64_t{1} << 53;

/// One row of the parameter table.
struct tensor_entry {
  std::string name;
  std::uint64_t size = 0;
  std::uint32_t flags = 0;
};

/// What identifies the optimizer a checkpoint belongs to (everything but the state values).
/// The weight and gradient sizes were two reserved zero bytes before the element types were
/// separated: a checkpoint of a uniform precision is written as it was then (both 0), so files of
/// either age load into the other, and a build that predates them refuses a mixed one.
struct header {
  std::uint8_t element_size = 0;  ///< sizeof(S), the state type (every state entry's 'f' size)
  std::uint8_t weight_size = 0;   ///< type_code<W>(); 0 means element_size
  std::uint8_t grad_size = 0;     ///< type_code<G>(); 0 means element_size
  std::string identity;
  std::uint64_t numel = 0;
  std::vector<tensor_entry> tensors;
};

/// The header's code of a weight or gradient type: the size of float and double (as before the
/// 16-bit types existed), 2 for half, 0x82 for bfloat16 (bfloat16 and half are both 2 bytes; a
/// checkpoint of one is refused by an optimizer of the other).
template <class E>
constexpr std::uint8_t type_code() {
  if constexpr (std::is_same_v<E, bfloat16>)
    return 0x82;
  else
    return static_cast<std::uint8_t>(sizeof(E));
}

/// A policy's name in the composition identity (its static `name`).
template <class P>
std::string name_of(const P&) {
  if constexpr (requires { P::name; })
    return P::name;
  else
    return "unnamed";
}
/// A policy's name with the options that fix its state's sizes, when the state says them.
template <class P, class S>
std::string name_of(const P& p, const S& s) {
  if constexpr (requires { s.identity(p); })
    return s.identity(p);
  else
    return name_of(p);
}

namespace detail {

inline std::invalid_argument error(const std::string& what) {
  return std::invalid_argument("flatmin: load(): " + what);
}

/// A saved string for an error message: at most 200 characters, non-printable bytes escaped.
inline std::string printable(std::string_view s) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out = "'";
  for (std::size_t i = 0; i < s.size() && i < 200; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  out += s.size() > 200 ? "'..." : "'";
  return out;
}

/// Element code of a state value type: 'f' floating point, 'u' unsigned integer, 'b' bool.
template <class E>
constexpr char code_of() {
  if constexpr (std::is_same_v<E, bool>)
    return 'b';
  else if constexpr (std::is_floating_point_v<E>)
    return 'f';
  else {
    static_assert(std::is_integral_v<E> && std::is_unsigned_v<E>, "checkpoint: unsupported state type");
    return 'u';
  }
}

template <class E>
inline constexpr bool is_scalar_v = std::is_arithmetic_v<E>;

/// Whether a visited entry goes into the file (an empty optional entry does not).
template <class V>
bool written(const V& v) {
  if constexpr (is_optional_entry_v<V>)
    return !v.value.empty();
  else
    return true;
}
/// The value a visited entry saves: the vector behind an optional entry, else the entry itself.
template <class V>
auto& vector_of(V& v) {
  if constexpr (is_optional_entry_v<V>)
    return v.value;
  else
    return v;
}

/// Converts n values between native and little-endian byte order (a no-op on little-endian hosts).
inline void to_little_endian(unsigned char* p, std::size_t n, std::size_t size) {
  if constexpr (std::endian::native == std::endian::big)
    for (std::size_t i = 0; i < n; ++i)
      for (std::size_t a = 0, b = size - 1; a < b; ++a, --b) std::swap(p[i * size + a], p[i * size + b]);
  else
    static_cast<void>(p), static_cast<void>(n), static_cast<void>(size);
}

class writer {
 public:
  explicit writer(std::ostream& os) : os_(os) {}
  void raw(const void* p, std::size_t n) {
    crc_.update(p, n);
    os_.write(static_cast<const char*>(p), static_cast<std::streamsize>(n));
  }
  template <class U>
  void uint(U v) {
    unsigned char b[sizeof(U)];
    for (std::size_t i = 0; i < sizeof(U); ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    raw(b, sizeof(U));
  }
  void str(std::string_view s) {
    uint(static_cast<std::uint32_t>(s.size()));
    raw(s.data(), s.size());
  }
  template <class E>
  void values(const E* p, std::size_t n) {
    constexpr std::size_t chunk = 4096;
    unsigned char buf[chunk * sizeof(E)];
    for (std::size_t i = 0; i < n; i += chunk) {
      const std::size_t m = std::min(chunk, n - i);
      if constexpr (std::is_same_v<E, bool>) {
        for (std::size_t j = 0; j < m; ++j) buf[j] = p[i + j] ? 1 : 0;
      } else {
        std::memcpy(buf, p + i, m * sizeof(E));
        to_little_endian(buf, m, sizeof(E));
      }
      raw(buf, m * sizeof(E));
    }
  }
  void finish() {
    const std::uint32_t c = crc_.value();
    unsigned char b[4];
    for (int i = 0; i < 4; ++i) b[i] = static_cast<unsigned char>(c >> (8 * i));
    os_.write(reinterpret_cast<const char*>(b), 4);
  }

 private:
  std::ostream& os_;
  crc32c crc_;
};

class reader {
 public:
  explicit reader(std::istream& is) : is_(is) {}
  void raw(void* p, std::size_t n, const char* what) {
    is_.read(static_cast<char*>(p), static_cast<std::streamsize>(n));
    if (!is_ || static_cast<std::size_t>(is_.gcount()) != n)
      throw error(std::string("truncated checkpoint (in ") + what + ")");
    crc_.update(p, n);
  }
  template <class U>
  U uint(const char* what) {
    unsigned char b[sizeof(U)];
    raw(b, sizeof(U), what);
    U v = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) v |= static_cast<U>(static_cast<U>(b[i]) << (8 * i));
    return v;
  }
  /// A string whose length must be at most `max` (checked before anything is read or allocated).
  std::string str(std::uint32_t max, const char* what) {
    const auto n = uint<std::uint32_t>(what);
    if (n > max)
      throw error(std::string(what) + " is " + std::to_string(n) + " bytes long, at most " +
                  std::to_string(max) + " expected");
    std::string s(n, '\0');
    raw(s.data(), n, what);
    return s;
  }
  /// n values of E into p (the caller has checked n).
  template <class E>
  void values(E* p, std::size_t n, const char* what) {
    if constexpr (std::is_same_v<E, bool>) {
      for (std::size_t i = 0; i < n; ++i) {
        unsigned char b = 0;
        raw(&b, 1, what);
        if (b > 1) throw error(std::string(what) + ": a bool is " + std::to_string(b) + ", not 0 or 1");
        p[i] = b != 0;
      }
    } else {
      raw(p, n * sizeof(E), what);
      to_little_endian(reinterpret_cast<unsigned char*>(p), n, sizeof(E));
    }
  }
  /// Reads the trailing CRC and compares it with the one of every byte read so far.
  void check_crc() {
    const std::uint32_t computed = crc_.value();
    unsigned char b[4];
    is_.read(reinterpret_cast<char*>(b), 4);
    if (!is_ || is_.gcount() != 4) throw error("truncated checkpoint (in the CRC-32C)");
    std::uint32_t saved = 0;
    for (int i = 0; i < 4; ++i) saved |= static_cast<std::uint32_t>(b[i]) << (8 * i);
#if !defined(FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION)
    if (saved != computed)
      throw error("CRC-32C mismatch (saved " + std::to_string(saved) + ", computed " +
                  std::to_string(computed) + "): the checkpoint is corrupt");
#else
    static_cast<void>(saved), static_cast<void>(computed);
#endif
  }

 private:
  std::istream& is_;
  crc32c crc_;
};

}  // namespace detail

/// The state read from a checkpoint, not yet applied: host copies of every entry, which the
/// states' check_load() inspect by name, then backend copies (build()), then commit().
template <class Backend>
class staged {
 public:
  /// Host copy of buffer `name` (std::invalid_argument if there is none of that type).
  template <class E>
  const std::vector<E>& buffer(std::string_view name) const {
    const auto* p = std::any_cast<std::vector<E>>(&find(name).host);
    if (!p) throw detail::error("state entry '" + std::string(name) + "' has another type");
    return *p;
  }
  /// Value of scalar `name`.
  template <class E>
  E scalar(std::string_view name) const {
    const auto* p = std::any_cast<E>(&find(name).host);
    if (!p) throw detail::error("state entry '" + std::string(name) + "' has another type");
    return *p;
  }
  /// Whether the checkpoint holds entry `name` (false for an optional entry it left out).
  bool has(std::string_view name) const {
    for (const auto& e : entries_)
      if (e.name == name) return e.host.has_value();
    return false;
  }
  std::uint64_t steps() const { return steps_; }

  /// Copies the buffers to the backend (allocates; may throw).
  void build() {
    for (auto& e : entries_)
      if (e.build) e.build(e.host);
  }
  /// Swaps the built buffers and assigns the scalars into the live state (cannot throw).
  void commit() noexcept {
    for (auto& e : entries_) e.commit();
  }

 private:
  struct entry {
    std::string name;
    std::any host;
    std::function<void(const std::any&)> build;  ///< host copy → backend copy
    std::function<void()> commit;
  };
  const entry& find(std::string_view name) const {
    for (const auto& e : entries_)
      if (e.name == name) return e;
    throw detail::error("state entry '" + std::string(name) + "' missing");
  }

  template <class B, class H, class V>
  friend staged<B> read(std::istream&, const H&, const V&);

  std::vector<entry> entries_;
  std::uint64_t steps_ = 0;
};

namespace detail {
/// The header's element type field: {'f', S, W, G}, with W = G = 0 when all three are one type.
inline std::array<unsigned char, 4> type_field(const header& h) {
  const auto size = [&](std::uint8_t x) { return x == 0 ? h.element_size : x; };
  const bool uniform = size(h.weight_size) == h.element_size && size(h.grad_size) == h.element_size;
  if (uniform) return {'f', h.element_size, 0, 0};
  return {'f', h.element_size, size(h.weight_size), size(h.grad_size)};
}

inline void write_header(writer& w, const header& h) {
  w.raw(magic_v2, 8);
  w.uint(format_version);
  const std::array<unsigned char, 4> type = type_field(h);
  w.raw(type.data(), 4);
  w.str(h.identity);
  w.uint(h.numel);
  w.uint(static_cast<std::uint32_t>(h.tensors.size()));
  for (const auto& t : h.tensors) {
    w.str(t.name);
    w.uint(t.size);
    w.uint(t.flags);
  }
}

inline std::string type_name(unsigned char code, unsigned size) {
  if (code == 'f' && size == 4) return "float";
  if (code == 'f' && size == 8) return "double";
  if (code == 'f' && size == 2) return "half";
  if (code == 'f' && size == 0x82) return "bfloat16";
  return std::string("element code ") + std::to_string(code) + " of " + std::to_string(size) + " bytes";
}
/// The element types of a header's type field {code, S, W, G} (W = G = 0: all S).
inline std::string types_name(const std::array<unsigned char, 4>& t) {
  if (t[2] == 0 && t[3] == 0) return type_name(t[0], t[1]);
  return "weights " + type_name(t[0], t[2]) + ", gradients " + type_name(t[0], t[3]) + ", state " +
         type_name(t[0], t[1]);
}

inline void read_header(reader& r, const header& h) {
  char magic[8];
  r.raw(magic, 8, "the magic");
  if (std::memcmp(magic, magic_v1, 8) == 0)
    throw error(
        "this is a version-1 checkpoint (\"FLATMIN1\"), which this version refuses: it carries no "
        "composition identity, parameter table or checksum, and lacks state an exact resume needs (mask "
        "step bookkeeping, Adam's last-step constants). It cannot be converted exactly: finish the run "
        "with the release that wrote it, or resume from the saved weights with a fresh optimizer");
  if (std::memcmp(magic, magic_v2, 8) != 0) throw error("not a flatmin checkpoint (bad magic)");
  const auto version = r.uint<std::uint32_t>("the format version");
  if (version != format_version)
    throw error("format version " + std::to_string(version) + ", this build reads version " +
                std::to_string(format_version));
  std::array<unsigned char, 4> type{};
  r.raw(type.data(), 4, "the element type");
  const std::array<unsigned char, 4> expected = type_field(h);
  if (type != expected)
    throw error("element type differs: saved " + types_name(type) + ", this optimizer uses " +
                types_name(expected));
  const std::string id = r.str(max_string, "the composition identity");
  if (id != h.identity)
    throw error("composition differs: saved " + printable(id) + ", this is '" + h.identity + "'");
  const auto numel = r.uint<std::uint64_t>("the parameter count");
  if (numel != h.numel)
    throw error("parameter count differs: saved " + std::to_string(numel) + ", this optimizer has " +
                std::to_string(h.numel));
  const auto count = r.uint<std::uint32_t>("the tensor count");
  if (count != h.tensors.size())
    throw error("tensor count differs: saved " + std::to_string(count) + ", this optimizer has " +
                std::to_string(h.tensors.size()));
  for (std::size_t t = 0; t < h.tensors.size(); ++t) {
    const auto& e = h.tensors[t];
    const std::string at = "tensor " + std::to_string(t) + " " + printable(e.name);
    const auto n = r.uint<std::uint32_t>("a tensor name");
    if (n != e.name.size())
      throw error(at + ": the saved name is " + std::to_string(n) + " bytes long, this one " +
                  std::to_string(e.name.size()));
    std::string name(n, '\0');
    r.raw(name.data(), n, "a tensor name");
    if (name != e.name) throw error(at + ": saved under the name " + printable(name));
    const auto size = r.uint<std::uint64_t>("a tensor size");
    if (size != e.size)
      throw error(at + " has " + std::to_string(e.size) + " entries, saved " + std::to_string(size));
    const auto flags = r.uint<std::uint32_t>("tensor flags");
    if (flags != e.flags)
      throw error(at + " has options (tensor_flags) " + std::to_string(e.flags) + ", saved " +
                  std::to_string(flags));
  }
}
}  // namespace detail

/// Writes a checkpoint: `h`, `steps`, then every entry `visit(f)` hands to f(name, value), where
/// value is a backend vector or an arithmetic scalar (unsigned integer, double or bool).
template <class Backend, class Visit>
void write(std::ostream& os, const header& h, std::uint64_t steps, const Visit& visit) {
  detail::writer w(os);
  detail::write_header(w, h);
  w.uint(steps);
  std::uint32_t count = 0;
  visit([&](const char*, auto& v) { count += detail::written(v); });
  w.uint(count);
  visit([&](const char* name, auto& entry) {
    if (!detail::written(entry)) return;
    auto& v = detail::vector_of(entry);
    using V = std::remove_cvref_t<decltype(v)>;
    w.str(name);
    if constexpr (detail::is_scalar_v<V>) {
      const unsigned char type[4] = {static_cast<unsigned char>(detail::code_of<V>()), sizeof(V), 0, 0};
      w.raw(type, 4);
      w.uint(std::uint64_t{1});
      w.values(&v, 1);
    } else {
      using E = typename V::value_type;
      const unsigned char type[4] = {static_cast<unsigned char>(detail::code_of<E>()), sizeof(E), 0, 0};
      w.raw(type, 4);
      w.uint(static_cast<std::uint64_t>(v.size()));
      if (v.size()) {
        const std::vector<E> host = Backend::to_host(v);
        w.values(host.data(), host.size());
      }
    }
  });
  w.finish();
  if (!os) throw std::runtime_error("flatmin: save(): write failed");
}

/// Reads a checkpoint written for `h` into host temporaries, sizes and names checked against what
/// `visit` lists (the live state's entries) before anything is allocated; the CRC checked last.
template <class Backend, class H, class Visit>
staged<Backend> read(std::istream& is, const H& h, const Visit& visit) {
  detail::reader r(is);
  detail::read_header(r, h);
  staged<Backend> st;
  st.steps_ = r.template uint<std::uint64_t>("the step count");
  if (st.steps_ > max_steps)
    throw detail::error("step count " + std::to_string(st.steps_) + " is out of range (at most 2^53)");
  std::uint32_t expected = 0, optionals = 0;
  visit([&](const char*, auto& v) {
    if constexpr (is_optional_entry_v<std::remove_cvref_t<decltype(v)>>)
      ++optionals;
    else
      ++expected;
  });
  const auto count = r.template uint<std::uint32_t>("the state entry count");
  if (count < expected || count - expected > optionals)
    throw detail::error("the checkpoint has " + std::to_string(count) + " state entries, this optimizer " +
                        std::to_string(expected) +
                        (optionals ? " to " + std::to_string(expected + optionals) : std::string()) +
                        " (another composition?)");
  st.entries_.reserve(expected + optionals);
  std::size_t index = 0;
  // The next entry's name, read ahead: an optional entry the file lacks leaves it for the next
  // visited entry. Name bytes are read only when their length is the one expected (bounded).
  std::uint32_t left = count, next_len = 0;
  bool have_len = false, have_name = false;
  std::string next_name;
  auto take = [&](std::string_view want, const std::string& at, bool may_lack) {
    if (!have_len) {
      if (left == 0) {
        if (may_lack) return false;
        throw detail::error(at + ": missing (the checkpoint has no more entries)");
      }
      next_len = r.template uint<std::uint32_t>("a state entry name");
      have_len = true;
    }
    if (next_len != want.size()) {
      if (may_lack) return false;
      throw detail::error(at + ": the saved name is " + std::to_string(next_len) + " bytes long, expected " +
                          std::to_string(want.size()));
    }
    if (!have_name) {
      next_name.assign(next_len, '\0');
      r.raw(next_name.data(), next_len, "a state entry name");
      have_name = true;
    }
    if (next_name != want) {
      if (may_lack) return false;
      throw detail::error(at + ": saved under the name " + detail::printable(next_name));
    }
    have_len = have_name = false;
    --left;
    return true;
  };
  visit([&](const char* name, auto& entry) {
    constexpr bool is_optional = is_optional_entry_v<std::remove_cvref_t<decltype(entry)>>;
    auto& v = detail::vector_of(entry);
    using V = std::remove_cvref_t<decltype(v)>;
    const std::string_view want(name);
    const std::string at = "state entry " + std::to_string(index++) + " '" + std::string(want) + "'";
    if (!take(want, at, is_optional)) {
      if constexpr (is_optional) {  // left out: the vector becomes empty (no host value: has() is false)
        auto& e = st.entries_.emplace_back();
        e.name = want;
        auto empty = std::make_shared<V>();
        e.commit = [&v, empty] { v.swap(*empty); };
      }
      return;
    }
    unsigned char type[4];
    r.raw(type, 4, "a state entry type");
    const auto size = r.template uint<std::uint64_t>("a state entry size");
    auto& e = st.entries_.emplace_back();
    e.name = want;
    if constexpr (detail::is_scalar_v<V>) {
      if (type[0] != detail::code_of<V>() || type[1] != sizeof(V) || type[2] || type[3] || size != 1)
        throw detail::error(at + ": not the expected scalar (element code " + std::to_string(type[0]) + ", " +
                            std::to_string(type[1]) + " bytes, count " + std::to_string(size) + ")");
      V x{};
      r.values(&x, 1, at.c_str());
      e.host = x;
      e.commit = [&v, x] { v = x; };
    } else {
      using E = typename V::value_type;
      if (type[0] != detail::code_of<E>() || type[1] != sizeof(E) || type[2] || type[3])
        throw detail::error(at + ": element type differs (element code " + std::to_string(type[0]) + ", " +
                            std::to_string(type[1]) + " bytes)");
      std::size_t want_size = v.size();
      if constexpr (is_optional) want_size = entry.size;
      if (size != want_size)
        throw detail::error(at + " has " + std::to_string(want_size) + " entries here, saved " +
                            std::to_string(size) + " (other options?)");
      auto host = std::vector<E>(want_size);
      r.values(host.data(), host.size(), at.c_str());
      e.host = std::move(host);
      auto built = std::make_shared<V>();
      e.build = [built](const std::any& h) {
        *built = Backend::from_host(std::any_cast<const std::vector<E>&>(h));
      };
      e.commit = [&v, built] { v.swap(*built); };
    }
  });
  if (left != 0)
    throw detail::error("the checkpoint has " + std::to_string(left) +
                        " state entries this optimizer does not expect (another composition?)");
  r.check_crc();
  return st;
}

}  // namespace flatmin::checkpoint
