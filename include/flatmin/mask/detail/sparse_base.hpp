#pragma once
/// @file sparse_base.hpp
/// `detail::sparse_state` — the state mask::fisher, mask::dynamic and mask::random share: the
/// units, one bit per unit (the committed mask and a step-local pending copy), the compact segment
/// lists of both, the saved-weights size, the mask's bytes per entry (entry_mask / set_entry_mask),
/// the checkpoint entry of the bits with its load check, and the step transaction.
///
/// Transaction: a mask written during a step (a refresh, a draw) goes to the pending copy; it
/// becomes the mask in commit_step() (the optimizer applied the step) and is dropped in
/// abandon_step() (skipped or cancelled). `seen` says whether the step's own passes already use it
/// (fisher, random) or only the steps after it (dynamic, whose refresh follows the ascent).
///
/// CRTP rather than a member: the shared part *is* most of the optimizer-facing surface (range,
/// saved_size, bytes, visit, check_load, …), so inheriting it keeps each mask to what differs,
/// without a forwarding function per name; the few places where a mask adds to a shared step call
/// a hook on the derived class (static dispatch, no virtual calls):
///   - `Derived::where` ("mask::fisher"), `Derived::unit_option` (the option that sizes the units),
///     `Derived::bits_entry` (the checkpoint entry's name), `Derived::bits_optional` (the bits are
///     saved only when they exist: mask::random stores none until the user sets a mask);
///   - `static unit_spec spec(const Mask&)`: the units the options ask for;
///   - `std::size_t active_bound() const`: the most active units the mask may hold (sizes the
///     saved weights of a compact mask);
///   - optional hooks, defaulting to nothing: `on_commit(bool mask_changed)`, `on_abandon()`,
///     `on_bits_set(host bits)` (after set_entry_mask), `visit_more(f)` (entries after the bits),
///     `check_more(staged, active) -> bound` (the mask's own load checks; returns the bound of
///     active units the loaded state allows), `on_load(loaded&) noexcept` (commits what it kept).

#include <algorithm>
#include <bit>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "../../backend/layout.hpp"
#include "../../concepts/state_entry.hpp"
#include "top_k.hpp"
#include "units.hpp"

namespace flatmin::mask::detail {

/// The units a mask's options ask for: the kind, and the entries per block for block units.
struct unit_spec {
  unit_kind kind = unit_kind::element;
  std::size_t block = 1;
};

/// Element or block units from a `block` option: 1 means elements (fisher, dynamic).
inline unit_spec block_units(std::size_t block) {
  return block > 1 ? unit_spec{unit_kind::block, block} : unit_spec{unit_kind::element, block};
}

template <class Derived, class T, class Backend>
class sparse_state {
 public:
  using layout_type = backend::layout<T, Backend>;
  using view = bit_view<T>;
  static constexpr bool compact = true;  ///< may be compact: see is_compact()

  /// Block and tensor units run the ascent and restore over the active units only; element masks
  /// use dense storage.
  bool is_compact() const { return units_.kind() != unit_kind::element; }

  /// Throws std::invalid_argument if the granularity changed since construction (the optimizer
  /// calls it before anything is written): it sizes the bits, scores and segment lists.
  template <class Mask>
  void check(const Mask& m) const {
    const unit_spec s = Derived::spec(m);
    units_.check_unchanged(Derived::where, Derived::unit_option, s.kind, s.block);
  }

  template <class Mask>
  void begin_step(const Mask&, std::size_t) {}

  /// The optimizer applied the step: the pending mask (if any) becomes the mask.
  void commit_step() {
    self().on_commit(pending_);
    if (pending_) {
      bits_.swap(bits_next_);
      range_.swap(range_next_);
    }
    abandon_step();
  }
  /// The step was skipped or cancelled: whatever it wrote is dropped.
  void abandon_step() {
    pending_ = false;
    self().on_abandon();
  }

  /// The mask this step's passes read: the bits in backend memory.
  view get_view() const { return {uview_, Backend::data(seen_bits())}; }
  backend::range_of<T, Backend> range(const layout_type& l) const {
    return is_compact() ? seen_range().range(l) : l.full();
  }
  /// Dense storage for element masks; for compact masks a bound on the active units' entries
  /// (active_bound() full units, plus the ineligible tensors), and at least the entries of the
  /// current and the pending mask, which set_entry_mask() or load() may have made larger.
  std::size_t saved_size(const layout_type& l) const {
    if (!is_compact()) return l.numel();
    return std::max({elements_bound(self().active_bound()), range_.elements(),
                     pending_ ? range_next_.elements() : std::size_t{0}});
  }
  double radius_scale() const { return 1.0; }
  /// Both bit buffers (the second makes skipped steps free of side effects), the unit tables and
  /// both segment lists, plus what the mask adds (extra_bytes()).
  std::size_t bytes() const {
    return (bits_.size() + bits_next_.size()) * sizeof(std::uint32_t) + units_.bytes() + range_.bytes() +
           range_next_.bytes() + self().extra_bytes();
  }

  /// Checkpoint entries: the bits, then the mask's own.
  template <class F>
  void visit(F&& f) {
    if constexpr (Derived::bits_optional) {
      optional_entry<bit_vector> e{bits_, units_.words()};
      f(Derived::bits_entry, e);
    } else {
      f(Derived::bits_entry, bits_);
    }
    self().visit_more(f);
  }

  /// What a checked checkpoint leaves for after_load(): the segment list of the loaded bits, their
  /// active units, the saved-weights size they need and the step count.
  struct loaded {
    compact_range<T, Backend> range;
    std::size_t active = 0;
    std::size_t saved_size = 0;
    std::uint64_t steps = 0;
    bool has_bits = true;
  };
  /// Checks the loaded entries (host copies in `s`) before anything is committed: no bit set past
  /// the unit count or on a unit that is not a candidate, then the mask's own checks, which bound
  /// the active units. Throws std::invalid_argument.
  template <class Staged>
  loaded check_load(const Staged& s) const {
    loaded l;
    l.steps = s.steps();
    l.has_bits = !Derived::bits_optional || s.has(Derived::bits_entry);
    const std::vector<std::uint32_t>* bits = nullptr;
    if (l.has_bits) {
      bits = &s.template buffer<std::uint32_t>(Derived::bits_entry);
      l.active = check_loaded_bits(units_, *bits, Derived::where);
    }
    const std::size_t bound = self().check_more(s, l.active);
    if (is_compact() && bits) l.range.build(units_, [&](std::size_t u) { return test_bit(bits->data(), u); });
    l.saved_size = is_compact() ? std::max(elements_bound(bound), l.range.elements()) : units_.count();
    return l;
  }
  /// Commits what check_load() built, after the optimizer has swapped the entries in (an explicit
  /// hook: the state learns of a load here, not by noticing that its buffers changed).
  void after_load(loaded& l) noexcept {
    if (l.has_bits) range_.swap(l.range);
    pending_ = false;
    self().on_load(l);
  }

  /// The mask of tensor t, one byte per entry (introspection; see detail::entry_mask).
  std::vector<std::uint8_t> entry_mask(const layout_type&, std::size_t t) const {
    const auto h = Backend::to_host(seen_bits());
    return detail::entry_mask(units_, t, [&](std::size_t u) { return test_bit(h.data(), u); });
  }
  /// Sets the mask of tensor t (validated by detail::set_entry_mask); nothing changes if it throws.
  void set_entry_mask(const layout_type&, std::size_t t, const std::vector<std::uint8_t>& mask) {
    auto h = bits_.empty() ? self().initial_bits() : Backend::to_host(bits_);
    detail::set_entry_mask(units_, h, t, mask);
    compact_range<T, Backend> r;
    if (is_compact()) r.build(units_, [&](std::size_t u) { return test_bit(h.data(), u); });
    bits_ = Backend::from_host(h);
    range_.swap(r);
    self().on_bits_set(h);
  }

  /// A sharded run (optimizer/data_parallel.hpp): this process's units are a part of units
  /// numbered across the processes (`span`, top_k.hpp); a mask that declares `spans_processes`
  /// selects over all of them (hook `on_span(mask)`: mask::dynamic draws its start mask again over
  /// every process's units). An empty span (the default): this process alone. Before the first
  /// step (the optimizer checks).
  template <class Mask>
  void set_span(const Mask& m, span s) {
    span_ = std::move(s);
    self().on_span(m);
  }
  const span& units_span() const { return span_; }
  /// Eligible units of every process (with a span), else of this one.
  std::size_t all_eligible_units() const {
    return span_.spans() ? static_cast<std::size_t>(span_.eligible) : units_.eligible_units();
  }

  /// The units (for tests and reports): element, block or tensor, counts.
  const detail::units<T, Backend>& units() const { return units_; }
  /// The committed mask bits, one per unit, in host memory (empty: mask::random draws).
  std::vector<std::uint32_t> host_bits() const { return Backend::to_host(bits_); }

 protected:
  using bit_vector = typename Backend::template vector<std::uint32_t>;

  /// `with_bits`: allocate both bit buffers now (zero); mask::random allocates one only when the
  /// user sets a mask.
  sparse_state(const layout_type& l, unit_spec s, bool with_bits)
      : units_(l, s.kind, s.block), uview_(units_.view(l)) {
    if (with_bits) {
      bits_ = Backend::template make_vector<std::uint32_t>(units_.words(), 0u);
      bits_next_ = Backend::template make_vector<std::uint32_t>(units_.words(), 0u);
    }
  }

  /// The pending bits (bits_next_) hold this step's new mask; `seen`: this step's passes use it.
  void stage_bits(bool seen) {
    stage_range(seen, [&] { range_next_.build_from_bits(units_, bits_next_); });
  }
  /// A pending mask that is only a segment list (mask::random's draws), built by `build()`.
  template <class Build>
  void stage_range(bool seen, const Build& build) {
    if (is_compact()) build();
    pending_ = true;
    seen_ = seen;
  }
  bool pending() const { return pending_; }
  bool pending_seen() const { return pending_ && seen_; }
  const bit_vector& seen_bits() const { return pending_seen() ? bits_next_ : bits_; }
  const compact_range<T, Backend>& seen_range() const { return pending_seen() ? range_next_ : range_; }

  /// Entries of the perturbed tensors that `k` active units may cover: the ineligible tensors'
  /// entries plus k full units (all eligible entries for tensor units, whose sizes differ).
  std::size_t elements_bound(std::size_t k) const {
    const std::size_t all = units_.eligible_elements();
    const bool whole = units_.kind() == unit_kind::tensor || k >= units_.eligible_units();
    return units_.dense_elements() + (whole ? all : std::min(k * units_.block(), all));
  }
  static std::size_t count_bits(const std::vector<std::uint32_t>& h) {
    std::size_t n = 0;
    for (const std::uint32_t w : h) n += static_cast<std::size_t>(std::popcount(w));
    return n;
  }

  // Hooks with nothing to do by default (a mask hides the ones it needs).
  void on_commit(bool) {}
  void on_abandon() {}
  void on_bits_set(const std::vector<std::uint32_t>&) {}
  template <class F>
  void visit_more(F&) {}
  template <class Staged>
  std::size_t check_more(const Staged&, std::size_t) const {
    return units_.eligible_units();
  }
  void on_load(loaded&) noexcept {}
  template <class Mask>
  void on_span(const Mask&) {}
  std::size_t extra_bytes() const { return 0; }
  std::vector<std::uint32_t> initial_bits() const { return std::vector<std::uint32_t>(units_.words(), 0u); }

  detail::units<T, Backend> units_;
  unit_view<T> uview_;
  bit_vector bits_, bits_next_;
  compact_range<T, Backend> range_, range_next_;
  span span_;  ///< set_span(): the units of every process of a sharded run

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  bool pending_ = false;  ///< bits_next_ / range_next_ hold a mask of this step
  bool seen_ = false;     ///< the step's own passes use it
};

}  // namespace flatmin::mask::detail
