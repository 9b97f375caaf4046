#pragma once
/// @file units.hpp
/// What the sparse masks share: the *units* a mask decides on (elements, blocks of one tensor, or
/// whole tensors), the map from a global index to its unit, one bit per unit in backend memory,
/// and the compact segment list of the active blocks.
///
/// Units are numbered tensor by tensor: tensor t owns units [unit_base[t], unit_base[t + 1]).
/// Element units are the global indices themselves; a block is `block` (a power of two ≤ 1024)
/// contiguous entries of one tensor, the last block of a tensor possibly shorter; a tensor unit
/// is the whole tensor. Blocks never straddle tensors, so a block is one segment.
///
/// Index → tensor uses a table of the tensor at the start of each 4096-entry chunk of the global
/// index space (N/1024 bytes) and a short forward walk, so the mask views cost O(1) per element on
/// every backend without a per-element table.

#include <algorithm>
#include <bit>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../../backend/layout.hpp"
#include "../../backend/summation.hpp"
#include "../../kernels/counter_hash.hpp"
#include "../../kernels/unit_scores.hpp"
#include "top_k.hpp"

namespace flatmin::mask {

/// The unit a sparse mask decides on: single entries, blocks of one tensor, or whole tensors (the
/// one encoding of it: mask::random's `unit` option, and the kind of every mask's units).
enum class granularity : std::uint8_t { element, block, tensor };

}  // namespace flatmin::mask

namespace flatmin::mask::detail {

using unit_kind = granularity;

inline constexpr unsigned chunk_shift = 12;

/// Device view: global index → unit, unit → tensor. (It reads no element: T names the mask's
/// state type only.)
template <class T>
struct unit_view {
  const backend::tensor_extent* tensors = nullptr;
  const std::uint32_t* chunk_tensor = nullptr;  ///< tensor holding global index c·4096
  const std::uint64_t* unit_base = nullptr;     ///< K + 1 entries
  std::uint32_t tensor_count = 0;
  std::uint32_t shift = 0;  ///< log₂ block (63 for tensor units)
  bool identity = true;     ///< element units: unit = global index

  FLATMIN_HD std::uint32_t tensor_of_index(std::size_t i) const {
    std::uint32_t t = chunk_tensor[i >> chunk_shift];
    while (i >= tensors[t].offset + tensors[t].size) ++t;
    return t;
  }
  FLATMIN_HD std::size_t operator()(std::size_t i) const {
    if (identity) return i;
    const std::uint32_t t = tensor_of_index(i);
    return static_cast<std::size_t>(unit_base[t] + ((i - tensors[t].offset) >> shift));
  }
  FLATMIN_HD std::uint32_t tensor_of_unit(std::size_t u) const {
    if (identity) return tensor_of_index(u);
    std::uint32_t lo = 0, hi = tensor_count;  // the last t with unit_base[t] <= u
    while (hi - lo > 1) {
      const std::uint32_t mid = (lo + hi) / 2;
      if (unit_base[mid] <= u)
        lo = mid;
      else
        hi = mid;
    }
    return lo;
  }
  /// First element (tensor-local) and length of unit u of tensor t.
  FLATMIN_HD std::uint64_t unit_start(std::size_t u, std::uint32_t t) const {
    return identity ? u - tensors[t].offset : (static_cast<std::uint64_t>(u - unit_base[t]) << shift);
  }
  FLATMIN_HD std::uint64_t unit_len(std::uint64_t start, std::uint32_t t) const {
    if (identity) return 1;
    const std::uint64_t rest = tensors[t].size - start;
    const std::uint64_t b = std::uint64_t{1} << shift;
    return shift >= 63 || rest < b ? rest : b;
  }
};

/// Reads one bit per unit.
FLATMIN_HD inline bool test_bit(const std::uint32_t* bits, std::size_t u) {
  return (bits[u >> 5] >> (u & 31)) & 1u;
}

/// Whether a tensor's entries are candidates of a sparse mask (perturbed and eligible).
using kernels::candidate_flags;

/// Checks a block size option: 1 (elements) or a power of two in [2, 1024].
inline void check_block(const char* where, std::size_t block) {
  flatmin::detail::check_option(block >= 1 && block <= 1024 && (block & (block - 1)) == 0, where, "block",
                                static_cast<double>(block),
                                "1 (element granularity) or a power of two <= 1024");
}
// A block lies inside one segment of its tensor (and so inside one shard of a sharded run).
static_assert(backend::segment_size % 1024 == 0, "flatmin: blocks of up to 1024 entries must tile a segment");

/// Host side of the units of one layout: the tables above in backend memory, and counts.
template <class T, class Backend>
class units {
 public:
  units(const backend::layout<T, Backend>& l, unit_kind kind, std::size_t block) : kind_(kind) {
    // Checked here too, not only by the masks' validate(): block 0 divides by zero below and a
    // block past 2^63 never ends the shift loop.
    if (kind == unit_kind::block) check_block("mask", block);
    const auto& ts = l.host_extents();
    std::vector<std::uint64_t> base(ts.size() + 1, 0);
    for (std::size_t t = 0; t < ts.size(); ++t) {
      std::uint64_t n = 0;
      switch (kind) {
        case unit_kind::element:
          n = ts[t].size;
          break;
        case unit_kind::block:
          n = (ts[t].size + block - 1) / block;
          break;
        case unit_kind::tensor:
          n = 1;
          break;
      }
      base[t + 1] = base[t] + n;
      if (candidate_flags(ts[t].flags)) {
        eligible_units_ += n;
        eligible_elements_ += ts[t].size;
      } else if (ts[t].flags & tensor_flags::perturb) {
        dense_elements_ += ts[t].size;
      }
    }
    count_ = base.back();
    std::vector<std::uint32_t> chunks((l.numel() + (std::size_t{1} << chunk_shift) - 1) >> chunk_shift, 0);
    for (std::size_t c = 0, t = 0; c < chunks.size(); ++c) {
      const std::uint64_t i = static_cast<std::uint64_t>(c) << chunk_shift;
      while (i >= ts[t].offset + ts[t].size) ++t;
      chunks[c] = static_cast<std::uint32_t>(t);
    }
    shift_ = 0;
    if (kind == unit_kind::block)
      while ((std::size_t{1} << shift_) < block) ++shift_;
    if (kind == unit_kind::tensor) shift_ = 63;
    host_base_ = base;
    host_tensors_ = ts;
    base_ = Backend::from_host(base);
    chunks_ = Backend::from_host(chunks);
  }

  unit_view<T> view(const backend::layout<T, Backend>& l) const {
    return {l.extents(),
            Backend::data(chunks_),
            Backend::data(base_),
            static_cast<std::uint32_t>(host_base_.size() - 1),
            shift_,
            kind_ == unit_kind::element};
  }
  unit_kind kind() const { return kind_; }
  std::size_t count() const { return count_; }
  std::size_t words() const { return (count_ + 31) / 32; }
  /// Units of perturbed, eligible tensors (the candidates of a selection).
  std::size_t eligible_units() const { return eligible_units_; }
  std::size_t eligible_elements() const { return eligible_elements_; }
  /// Entries of perturbed tensors that are not eligible (always perturbed, densely).
  std::size_t dense_elements() const { return dense_elements_; }
  std::size_t block() const { return kind_ == unit_kind::block ? std::size_t{1} << shift_ : 1; }
  /// Throws std::invalid_argument if a mask's granularity option no longer matches these units:
  /// the bits, scores and compact lists are sized by it when the optimizer is built.
  void check_unchanged(const char* where, const char* option, unit_kind kind, std::size_t block) const {
    const std::size_t now = kind == unit_kind::block ? block : 1;
    if (kind != kind_ || now != this->block())
      throw std::invalid_argument(std::string("flatmin::") + where + ": " + option +
                                  " changed after construction (" + std::to_string(this->block()) + " " +
                                  name(kind_) + " -> " + std::to_string(now) + " " + name(kind) +
                                  "); it sizes the mask state, build a new optimizer to change it");
  }
  const std::vector<std::uint64_t>& host_base() const { return host_base_; }
  const std::vector<backend::tensor_extent>& host_tensors() const { return host_tensors_; }
  std::size_t bytes() const {
    return chunks_.size() * sizeof(std::uint32_t) + base_.size() * sizeof(std::uint64_t);
  }

 private:
  static const char* name(unit_kind k) {
    return k == unit_kind::element ? "element" : k == unit_kind::block ? "block" : "tensor";
  }

  unit_kind kind_;
  unsigned shift_ = 0;
  std::size_t count_ = 0, eligible_units_ = 0, eligible_elements_ = 0, dense_elements_ = 0;
  std::vector<std::uint64_t> host_base_;
  std::vector<backend::tensor_extent> host_tensors_;
  typename Backend::template vector<std::uint64_t> base_;
  typename Backend::template vector<std::uint32_t> chunks_;
};

/// Writes bits[w] for every word from `pred(u)` (one thread per 32 units: no write conflicts).
template <class Pred>
struct fill_bits {
  Pred pred;
  std::uint32_t* bits;
  std::size_t n;
  FLATMIN_HD void operator()(std::size_t w) const {
    std::uint32_t b = 0;
    const std::size_t lo = w * 32;
    if (lo + 32 <= n) {
      for (std::uint32_t j = 0; j < 32; ++j) b |= static_cast<std::uint32_t>(pred(lo + j)) << j;
    } else {
      for (std::uint32_t j = 0; lo + j < n; ++j) b |= static_cast<std::uint32_t>(pred(lo + j)) << j;
    }
    bits[w] = b;
  }
};

/// The compact segment list over the units for which `active(u)` holds (host predicate), plus every
/// entry of the perturbed but ineligible tensors. Adjacent active units of a tensor merge into one
/// segment as long as it stays inside one segment of the layout (tensor entries [jS, (j+1)S)), so
/// that each compact segment lies in one layout segment and a sharded run's compact lists (over
/// whole layout segments each) concatenate to the one-process list, partial sums and all
/// (stats_reducer.hpp); `slot` numbers the kept entries consecutively.
template <class T, class Backend>
class compact_range {
 public:
  template <class Active>
  void build(const units<T, Backend>& u, const Active& active) {
    const auto& ts = u.host_tensors();
    const auto& base = u.host_base();
    const std::size_t S = Backend::segment_size;
    std::vector<backend::segment> list;
    std::uint64_t slot = 0;
    auto push = [&](std::uint32_t t, std::uint64_t local, std::uint64_t len) {
      if (!list.empty()) {
        auto& b = list.back();
        if (b.tensor == t && b.local + b.len == local && b.local / S == (local + len - 1) / S) {
          b.len += static_cast<std::uint32_t>(len);
          slot += len;
          return;
        }
      }
      list.push_back({ts[t].offset + local, local, slot, t, static_cast<std::uint32_t>(len)});
      slot += len;
    };
    for (std::uint32_t t = 0; t < ts.size(); ++t) {
      if (!(ts[t].flags & tensor_flags::perturb)) continue;
      if (!(ts[t].flags & tensor_flags::mask_eligible)) {
        for (std::uint64_t b = 0; b < ts[t].size; b += S)
          push(t, b, std::min<std::uint64_t>(S, ts[t].size - b));
        continue;
      }
      const std::uint64_t ulen = u.kind() == unit_kind::tensor ? ts[t].size : u.block();
      for (std::uint64_t k = base[t]; k < base[t + 1]; ++k) {
        if (!active(k)) continue;
        const std::uint64_t local = (k - base[t]) * ulen;
        const std::uint64_t len = std::min<std::uint64_t>(ulen, ts[t].size - local);
        for (std::uint64_t b = 0; b < len; b += S) push(t, local + b, std::min<std::uint64_t>(S, len - b));
      }
    }
    elements_ = slot;
    segs_ = Backend::from_host(list);
    count_ = list.size();
  }
  /// Builds the list from mask bits (one per unit, in backend memory).
  void build_from_bits(const units<T, Backend>& u,
                       const typename Backend::template vector<std::uint32_t>& bits) {
    const auto h = Backend::to_host(bits);
    build(u, [&](std::size_t k) { return test_bit(h.data(), k); });
  }
  /// Exchanges two lists without copying (a load()'s commit; a mask's committed and pending lists).
  void swap(compact_range& o) noexcept {
    segs_.swap(o.segs_);
    std::swap(count_, o.count_);
    std::swap(elements_, o.elements_);
  }
  backend::range_of<T, Backend> range(const backend::layout<T, Backend>& l) const {
    return l.over(segs_, count_, elements_);
  }
  std::size_t elements() const { return elements_; }
  std::size_t bytes() const { return segs_.size() * sizeof(backend::segment); }

 private:
  typename Backend::template vector<backend::segment> segs_;
  std::size_t count_ = 0, elements_ = 0;
};

}  // namespace flatmin::mask::detail

namespace flatmin::mask::detail {

/// What a unit's score sums over its entries (kernels/unit_scores.hpp).
using kernels::score_of;

/// Scores hold −1 for units that are not candidates (so that a selection reads one value per
/// unit and no tensor table), and the candidates' non-negative sums.

/// Element units: kernels::element_scores (kernels/unit_scores.hpp).
using kernels::element_scores;

/// Block units: out[u] = from[u] + Σ_block h(g / scale) (one block per call), −1 on the blocks
/// that are not candidates. Returns 1 for a non-finite block sum (with `check_all`, also for a
/// non-finite entry of a block that is not a candidate). Rec: the layout's tensor table type.
template <class T, class Rec = backend::tensor_rec<T>>
struct block_scores {
  unit_view<T> units;
  const Rec* tensors;  ///< the layout's tensor table (where g lies)
  T* out;
  const T* from;
  T inv_scale;
  score_of what;
  bool check_all = false;
  FLATMIN_HD double operator()(std::size_t u) const {
    const std::uint32_t t = units.tensor_of_unit(u);
    const backend::tensor_extent& r = units.tensors[t];
    const std::uint64_t start = units.unit_start(u, t), len = units.unit_len(start, t);
    const auto* g = tensors[t].g + start;
    if (!candidate_flags(r.flags)) {
      out[u] = T(-1);
      T s = 0;
      if (check_all)  // NaN iff one is not finite
        for (std::uint64_t j = 0; j < len; ++j) s += static_cast<T>(g[j]) * inv_scale * T(0);
      return s == T(0) ? 0.0 : 1.0;
    }
    T s = 0;
    if (what == score_of::square) {
      for (std::uint64_t j = 0; j < len; ++j) {
        const T x = static_cast<T>(g[j]) * inv_scale;
        s += x * x;
      }
    } else if (what == score_of::magnitude) {
      for (std::uint64_t j = 0; j < len; ++j) {
        const T x = static_cast<T>(g[j]) * inv_scale;
        s += x < T(0) ? -x : x;
      }
    }
    out[u] = from ? from[u] + s : s;
    return s - s == T(0) ? 0.0 : 1.0;
  }
};

/// out = from + the scores of the current gradient (one per unit), or the scores alone when
/// `from` is null. One pass; returns the number of non-finite scores (units whose g had a NaN or
/// Inf, or overflowed), and with `check_all` of units of other tensors whose g had one.
template <class T, class Backend>
std::size_t add_scores(const backend::layout<T, Backend>& l, const units<T, Backend>& u, T* out,
                       const T* from, T inv_scale, score_of what, bool check_all = false) {
  if (u.kind() == unit_kind::element)
    return static_cast<std::size_t>(Backend::template reduce<double>(
        l.full(), element_scores<T>{out, from, inv_scale, what, check_all}));
  const block_scores<T, typename backend::layout<T, Backend>::rec_type> f{
      u.view(l), l.tensors(), out, from, inv_scale, what, check_all};
  // One unit per thread where the backend can count (a block's score is itself a loop: blocks of
  // S units per thread left a GPU with a few dozen threads); a count is exact in any order.
  if constexpr (requires { Backend::count_index(u.count(), f); })
    return static_cast<std::size_t>(Backend::count_index(u.count(), f));
  else
    return static_cast<std::size_t>(Backend::template reduce_index<double>(u.count(), f));
}

/// Top-k key: the unit's score, for candidate units (score ≥ 0), optionally only those whose bit
/// in `among` equals `among_value`.
template <class T>
struct score_key {
  const T* score;
  const std::uint32_t* among = nullptr;
  bool among_value = true;
  FLATMIN_HD bool operator()(std::size_t u, std::uint64_t& k) const {
    const T s = score[u];
    if (!(s >= T(0))) return false;
    if (among && test_bit(among, u) != among_value) return false;
    k = float_key(s);
    return true;
  }
};

/// Top-k key: a random 32-bit score from (seed, stream, unit), for candidate units (optionally
/// only those whose bit in `among` equals `among_value`).
template <class T>
struct random_key {
  unit_view<T> units;
  std::uint64_t seed, stream;
  const std::uint32_t* among = nullptr;
  bool among_value = false;
  std::uint64_t offset = 0;  ///< the hash is of the global unit index u + offset (a sharded run)
  FLATMIN_HD bool operator()(std::size_t u, std::uint64_t& k) const {
    if (!candidate_flags(units.tensors[units.tensor_of_unit(u)].flags)) return false;
    if (among && test_bit(among, u) != among_value) return false;
    k = kernels::counter_hash(seed, stream, u + offset) >> 32;
    return true;
  }
};

/// m(i): entries of ineligible tensors always, others by their unit's bit.
template <class T>
struct bit_view {
  unit_view<T> units;
  const std::uint32_t* bits;
  FLATMIN_HD bool operator()(std::size_t i, std::uint32_t flags) const {
    if (!(flags & tensor_flags::mask_eligible)) return true;
    return test_bit(bits, units(i));
  }
  /// Element units: the unit of global index i is i, so the bits of eight consecutive entries are
  /// eight consecutive bits (what the statistics pass's host fast path reads, backend/host/mask_lanes.hpp).
  bool element_units() const { return units.identity; }
  /// Bits of units u … u + 7 (bit r: unit u + r); all eight must exist.
  std::uint32_t bits8(std::size_t u) const {
    const std::size_t w = u >> 5;
    const unsigned b = static_cast<unsigned>(u & 31);
    std::uint32_t x = bits[w] >> b;
    if (b > 24) x |= bits[w + 1] << (32 - b);
    return x & 0xffu;
  }
};

/// Number of set bits (the active units).
struct popcount_word {
  const std::uint32_t* bits;
  FLATMIN_HD double operator()(std::size_t w) const {
    std::uint32_t x = bits[w];
    double c = 0;
    while (x) {
      x &= x - 1;
      c += 1;
    }
    return c;
  }
};

/// Checks mask bits read from a checkpoint (host copy, one bit per unit, `u.words()` words): no
/// bit past the unit count, none on a unit of a tensor that is not a candidate (the selections
/// never set those). Returns the number of set bits; throws std::invalid_argument.
template <class T, class Backend>
std::size_t check_loaded_bits(const units<T, Backend>& u, const std::vector<std::uint32_t>& bits,
                              const char* where) {
  auto fail = [&](const std::string& what) {
    return std::invalid_argument(std::string("flatmin: load(): ") + where + ": " + what);
  };
  if (bits.size() != u.words())
    throw fail(std::to_string(bits.size()) + " words of mask bits, " + std::to_string(u.words()) +
               " expected");
  const std::size_t tail = u.count() & 31;
  if (tail && (bits.back() >> tail) != 0)
    throw fail("mask bits set past the " + std::to_string(u.count()) + " units (padding bits must be 0)");
  const auto& ts = u.host_tensors();
  const auto& base = u.host_base();
  for (std::size_t t = 0; t < ts.size(); ++t)
    if (!candidate_flags(ts[t].flags))
      for (std::uint64_t k = base[t]; k < base[t + 1]; ++k)
        if (test_bit(bits.data(), k))
          throw fail("mask bit of unit " + std::to_string(k) + " set, in tensor " + std::to_string(t) +
                     ", which is not a candidate (not perturbed or not mask-eligible)");
  std::size_t n = 0;
  for (const std::uint32_t w : bits) n += static_cast<std::size_t>(std::popcount(w));
  return n;
}

/// The union of two selections.
template <class A, class B>
struct either {
  A a;
  B b;
  FLATMIN_HD bool operator()(std::size_t u) const { return a(u) || b(u); }
};

/// Host side of mask introspection: the mask of tensor t, one byte per entry (1: ε may be non-zero
/// there), from `on(u)` per unit of an eligible tensor; entries of perturbed, ineligible tensors
/// are 1 (always perturbed), entries of tensors that are not perturbed 0.
template <class T, class Backend, class On>
std::vector<std::uint8_t> entry_mask(const units<T, Backend>& u, std::size_t t, const On& on) {
  const auto& r = u.host_tensors().at(t);
  if (!(r.flags & tensor_flags::perturb)) return std::vector<std::uint8_t>(r.size, 0);
  if (!(r.flags & tensor_flags::mask_eligible)) return std::vector<std::uint8_t>(r.size, 1);
  std::vector<std::uint8_t> m(r.size);
  const std::uint64_t base = u.host_base()[t];
  const std::uint64_t len = u.kind() == unit_kind::tensor ? r.size : u.block();
  for (std::uint64_t j = 0; j < r.size; ++j) m[j] = on(static_cast<std::size_t>(base + j / len)) ? 1 : 0;
  return m;
}

/// Writes the bits of tensor t's units from a byte per entry (non-zero: perturbed), after checking
/// it: one byte per entry, and a unit (block, tensor) all-or-nothing; a tensor that is not a
/// candidate must be given what it is (all 1 if perturbed densely, all 0 if not perturbed).
/// Throws std::invalid_argument, leaving `bits` unchanged.
template <class T, class Backend>
void set_entry_mask(const units<T, Backend>& u, std::vector<std::uint32_t>& bits, std::size_t t,
                    const std::vector<std::uint8_t>& mask) {
  auto bad = [&](const std::string& what) {
    return std::invalid_argument("flatmin: set_mask(): tensor " + std::to_string(t) + ": " + what);
  };
  const auto& r = u.host_tensors().at(t);
  if (mask.size() != r.size)
    throw bad("mask has " + std::to_string(mask.size()) + " entries, the tensor " + std::to_string(r.size));
  if (!candidate_flags(r.flags)) {
    const bool fixed = (r.flags & tensor_flags::perturb) != 0;
    for (std::uint8_t b : mask)
      if ((b != 0) != fixed)
        throw bad(fixed ? "not mask-eligible (always perturbed): its mask is all ones"
                        : "not perturbed: its mask is all zeros");
    return;
  }
  const std::uint64_t base = u.host_base()[t];
  const std::uint64_t len = u.kind() == unit_kind::tensor ? r.size : u.block();
  for (std::uint64_t j = 0; j < r.size; j += len)
    for (std::uint64_t e = j + 1; e < std::min<std::uint64_t>(j + len, r.size); ++e)
      if ((mask[e] != 0) != (mask[j] != 0))
        throw bad("entries " + std::to_string(j) + " and " + std::to_string(e) +
                  " are one unit of the mask (block of " + std::to_string(len) + ") and must agree");
  for (std::uint64_t j = 0; j < r.size; j += len) {
    const std::uint64_t k = base + j / len;
    const std::uint32_t bit = 1u << (k & 31);
    if (mask[j])
      bits[k >> 5] |= bit;
    else
      bits[k >> 5] &= ~bit;
  }
}

}  // namespace flatmin::mask::detail
