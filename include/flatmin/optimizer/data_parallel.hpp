#pragma once
/// @file data_parallel.hpp
/// `data_parallel<Optimizer, Comm>`: a `sharpness_aware` composition run by P processes on their own
/// batches (SPMD: every rank builds the same object over the same parameter table and calls the same
/// protocol), communicating through a `comm::communicator` (comm/communicator.hpp). Modes
/// (`data_parallel_options::mode`):
///
/// - `global_perturbation`: g is averaged over the ranks before the ascent, so ε is SAM's on the
///   global batch; g_adv is averaged before the descent. Every rank holds the whole optimizer state
///   and computes the same step.
/// - `per_worker_perturbation`: each rank forms ε from its own g (m-sharpness with m = the local
///   batch, the SAM paper's distributed experiments and its official JAX code); only g_adv is
///   averaged. Every rank holds the whole state; the weights agree again after each descent.
/// - `sharded` (ZeRO-1): the flat parameter space of the one-process layout (backend/layout.hpp) is
///   cut into P shards of whole segments, in rank order; rank r holds the optimizer state (moments,
///   saved weights) of shard r only and updates only its weights, then the updated shards are
///   all-gathered. g and g_adv are reduce-scattered (each rank receives the average over its shard).
///   The step statistics (‖g‖, the non-finite count) are global through the optimizer's one hook
///   (optimizer/stats_reducer.hpp), summed in the one-process order. mask::fisher (FSAM, SSAM-F
///   with the accumulated or current-batch estimate) and mask::dynamic (SSAM-D) select over every
///   shard: each rank scores its shard's entries, and one radix selection on histograms summed
///   over the ranks (mask/detail/top_k.hpp) finds the one-process threshold and tie; SSAM-D's
///   random draws hash the global entry index. So the masks are the one-process masks cut into
///   shards. mask::random (ESAM's stochastic weight perturbation) hashes the one-process entry or
///   tensor number (a tensor split between shards is one unit in both). A compact mask's sums over
///   its range are per-segment partials combined in rank order too: its segments never cross the
///   layout's (mask/detail/units.hpp), so the shards' lists concatenate to the one-process list.
///   Needs mask::dense; mask::fisher / mask::dynamic (entry or block units: a block, at most 1024
///   entries, never straddles a segment, hence a shard); or mask::random with entry or tensor
///   units; descent::standard or ESAM's data selection; and regularize::none (BAR's balancedness
///   and the descent rules with state are not distributed yet). What is not sharded is refused at
///   construction (usage_error on every rank).
///
/// ESAM's data selection (select::sharpness_sensitive), in every mode, is global: the ranks'
/// per-sample loss increases are gathered and the ⌈γ·Σ|B_r|⌉ largest of the concatenated batch are
/// kept (ties to the lower index of the concatenation, rank by rank), as one process would on the
/// concatenated batch. Each rank then takes the gradient over its part of the selection (none when
/// it has no selected sample), and g_adv is the count-weighted average
/// (comm::rank_ordered_mean_into with the counts), the mean over every selected sample. The
/// closure protocol does all of that in step(); the two-call protocol calls select() between
/// ascend() and descend().
///
/// "The average over ranks" is always `comm::rank_ordered_mean`: the ranks' values added in rank
/// order in double, divided by P, rounded once. Hence the contract the tests check: in global and
/// sharded mode P ranks produce, bit for bit, the weights and reports of one process whose
/// gradient is that average (the gradient of the concatenated batch, if each rank's gradient is
/// its batch mean and the batches are of equal size; for batches of different sizes,
/// `set_batch_size` makes it the batch-size-weighted mean, again the concatenated batch's).
///
/// Averaging: with `average_gradients` (default) flatmin averages the gradient views itself, in
/// buckets of at most `bucket_bytes` over its flat layout: an all-to-all moves each rank's slice of
/// every bucket to the rank that owns it, which adds the P slices in rank order (a reduce-scatter
/// whose result does not depend on the engine), and an all-gather brings the averages back (not in
/// sharded mode, where a rank only needs its shard). Afterwards the gradient views hold the average
/// (sharded: on the rank's own shard; the rest of the views is left as it was). Without it the
/// caller averages (global: g and g_adv; per-worker: g_adv; sharded: at least the rank's shard) and
/// flatmin only makes its statistics and decisions global (ESAM: g_adv weighted by
/// `selected_counts()`).
///
/// Faults (no rank is left waiting in a collective): every call that can fail on one rank alone is
/// followed by a vote (one small all-gather) so that all ranks leave it the same way.
/// - A non-finite g or g_adv on any rank skips the step on every rank (weights restored bit-exactly,
///   state untouched, `skipped`); with `nonfinite::raise` every rank throws non_finite_error.
/// - Parameter tables that differ across ranks (count, name, size, flags) throw
///   std::invalid_argument at construction on every rank, naming the first rank and tensor that
///   differ from rank 0's.
/// - An exception in the objective (closure protocol) or in the optimizer on some ranks cancels the
///   step on all ranks (weights restored); the ranks where it was thrown rethrow it, the others throw
///   `peer_error` naming the lowest such rank and its message.
/// Options must be equal on every rank (they are not compared; grad_scale and found_inf are: a
/// found_inf on any rank holds for all, and differing grad_scales throw std::invalid_argument).
///
/// Checkpoints: save() writes this rank's state (sharded: its shard's) after a small header (rank,
/// rank count, mode); load() is collective and all-or-nothing across the ranks (a rank that fails
/// makes the others roll back). A sharded checkpoint loads onto the same rank count only, each rank
/// its own file; resuming is bit-exact. The weights are the caller's to save.
///
/// Buffers: the averaging and the weight gather keep their send and receive buffers between steps
/// (about 2 · bucket_bytes + bucket_bytes / P for the gradients' and 2 · bucket_bytes / P for the
/// weights', once the model is that large).
///
/// Memory: the averaging's and the weight gather's buffers are where the backend keeps its vectors
/// (backend::eigen: host memory; backend::thrust: device memory), and the gradient and weight views
/// are copied into and out of them, and averaged, by the backend (the mean entry by entry with
/// comm::rank_mean_entry on backend::thrust). The communicator must move that memory
/// (comm::space_of): comm::mpi, comm::callbacks and comm::none move host memory, so they serve
/// backend::eigen and backend::thrust on a host device system (OMP, CPP); backend::thrust under
/// CUDA needs a communicator of device memory (comm::nccl), which is checked at compile time. With a
/// device communicator the small host messages (votes, flags, statistics, ESAM's increases) are
/// staged through a device buffer.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <istream>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../backend/layout.hpp"
#include "../comm/communicator.hpp"
#include "../comm/none.hpp"
#include "../descent/standard.hpp"
#include "../mask/dense.hpp"
#include "../mask/dynamic.hpp"
#include "../mask/fisher.hpp"
#include "../regularize/none.hpp"
#include "sharpness_aware.hpp"
#include "stats_reducer.hpp"

namespace flatmin {

enum class parallel_mode { global_perturbation, per_worker_perturbation, sharded };

inline const char* to_string(parallel_mode m) {
  switch (m) {
    case parallel_mode::global_perturbation:
      return "global_perturbation";
    case parallel_mode::per_worker_perturbation:
      return "per_worker_perturbation";
    case parallel_mode::sharded:
      return "sharded";
  }
  return "?";
}

struct data_parallel_options {
  parallel_mode mode = parallel_mode::global_perturbation;
  bool average_gradients = true;  ///< flatmin averages the gradient views (else the caller)
  std::size_t bucket_bytes = std::size_t{16} << 20;  ///< bound on one collective's send buffer

  void validate() const {
    detail::check_option(mode == parallel_mode::global_perturbation ||
                             mode == parallel_mode::per_worker_perturbation || mode == parallel_mode::sharded,
                         "data_parallel_options", "mode", static_cast<double>(mode),
                         "global_perturbation, per_worker_perturbation or sharded");
    detail::check_option(bucket_bytes >= 64 && bucket_bytes <= (std::size_t{1} << 30),
                         "data_parallel_options", "bucket_bytes", static_cast<double>(bucket_bytes),
                         "in [64, 2^30]");
  }
};

/// Thrown on the ranks where nothing failed when another rank failed (`rank()`: the lowest such).
class peer_error : public std::runtime_error {
 public:
  peer_error(int rank, const std::string& what) : std::runtime_error(what), rank_(rank) {}
  int rank() const noexcept { return rank_; }

 private:
  int rank_;
};

template <class Optimizer, comm::communicator Comm = comm::none>
class data_parallel {
  // Its protocol averages g before the ascent and g_adv before the descent: a composition whose
  // ascent reads no gradient at w, or that takes a gradient at a second point, would run the wrong
  // number of gradients or none where it averages.
  static_assert(!requires { requires !Optimizer::perturb_type::needs_clean_gradient; },
                "flatmin::data_parallel: compositions whose ascent takes no gradient at w (Momentum-SAM, "
                "Flat-LoRA, SAMPa) are not distributed yet");
  static_assert(!requires { requires Optimizer::two_points; },
                "flatmin::data_parallel: compositions with a second gradient point (SAMPa) are not "
                "distributed yet");

  using mask_state = typename Optimizer::mask_type::template state<typename Optimizer::value_type,
                                                                    typename Optimizer::backend_type>;
  using backend_t = typename Optimizer::backend_type;
  /// The memory the communicator moves, and where the buffers live (see the file comment).
  static constexpr memory_space comm_space = comm::space_of<Comm>;
  static constexpr bool device_buffers = backend_t::vector_space == memory_space::device;
  static_assert(comm_space == memory_space::host || device_buffers,
                "flatmin::data_parallel: a communicator of device memory (comm::nccl) needs a backend whose "
                "vectors are in device memory (backend::thrust)");
  static_assert(comm_space == memory_space::device || backend_t::host_addressable,
                "flatmin::data_parallel: backend::thrust under CUDA keeps its buffers in device memory, "
                "which this communicator (host memory) cannot move: use comm::nccl");
  template <class T>
  using buffer = typename backend_t::template vector<T>;  ///< in the backend's memory
  /// ESAM's data selection (select::sharpness_sensitive): select() chooses over every rank's batch.
  static constexpr bool selects_samples = requires { requires Optimizer::descent_type::selects_samples; };
  /// What sharded mode runs: a mask that is dense, selects over every process (the masks'
  /// `spans_processes`) or draws over the one-process numbering (`numbers_globally`); a descent
  /// rule without reductions of its own; no regularizer.
  static constexpr bool shardable =
      (std::is_same_v<typename Optimizer::mask_type, mask::dense> ||
       requires { mask_state::spans_processes; } || requires { mask_state::numbers_globally; }) &&
      (std::is_same_v<typename Optimizer::descent_type, descent::standard> || selects_samples) &&
      std::is_same_v<typename Optimizer::regularizer_type, regularize::none>;

 public:
  using optimizer_type = Optimizer;
  using weight_type = typename Optimizer::weight_type;
  using grad_type = typename Optimizer::grad_type;
  using composition_type = typename Optimizer::composition_type;
  using W = weight_type;
  using G = grad_type;

  /// Collective. Builds the rank's optimizer over `params` (sharded: over its shard of them).
  /// Throws on every rank (see the file comment) for bad options, an invalid or mismatched
  /// parameter table, a view outside host memory, or (sharded) fewer segments than ranks.
  data_parallel(const param_set<W, G>& params, composition_type c, Comm comm = {},
                data_parallel_options o = {})
      : ctx_(std::make_unique<context>(std::move(comm))), options_(o) {
    const int P = ctx_->comm.size();
    run_agreed([&] {
      options_.validate();
      params.validate();
      if constexpr (!device_buffers)
        for (const auto& v : params.tensors())
          if (v.space != memory_space::host)
            throw usage_error("flatmin::data_parallel: tensor " + detail::quote(v.name) +
                              " is not in host memory, which backend " + backend_t::name +
                              " works in (device memory: backend::thrust with comm::nccl)");
    });
    check_same_tables(params);
    for (const auto& v : params.tensors()) {
      views_.push_back({v.value, v.grad, numel_, v.size});
      numel_ += v.size;
    }
    run_agreed([&] {
      if (sharded()) {
        if constexpr (!shardable) {
          throw usage_error(
              "flatmin::data_parallel: sharded mode needs mask::dense, mask::fisher, mask::dynamic or "
              "mask::random; "
              "descent::standard or select::sharpness_sensitive; and regularize::none");
        } else {  // the mask's units: sharpness_aware::set_stats_reducer below refuses what is not sharded
          make_shards(params);
          opt_.emplace(shard_params_, std::move(c));
        }
      } else {
        bounds_.resize(static_cast<std::size_t>(P) + 1);
        for (int r = 0; r <= P; ++r)
          bounds_[r] = numel_ * static_cast<std::size_t>(r) / static_cast<std::size_t>(P);
        opt_.emplace(params, std::move(c));
      }
    });
    if (sharded()) {
      std::size_t perturbable = 0;
      for (const auto& v : params.tensors())
        if (v.flags() & tensor_flags::perturb) perturbable += v.size;
      opt_->set_stats_reducer(ctx_.get(), perturbable);  // collective (the mask's span)
    }
  }

  /// First half of a step (collective), as `sharpness_aware::ascend` (with g in the views).
  step_report ascend(const step_args& args = {}) {
    if (phase_ != phase::idle)
      throw usage_error("flatmin::data_parallel: ascend() called twice without descend()");
    const step_args a = agree_args(args);
    if (options_.average_gradients && options_.mode != parallel_mode::per_worker_perturbation)
      average(!sharded(), counts_of(batches_), batches_ ? batches_->total : 0);
    std::exception_ptr err;
    step_report r;
    try {
      r = opt_->ascend(a);
    } catch (...) {
      err = std::current_exception();
    }
    const auto v = exchange(err, r.skipped ? 1 : 0, 0.0);
    const int failed = first_failed(v);
    if (failed >= 0) {
      opt_->cancel();
      phase_ = phase::idle;
      rethrow(err, v, failed, "ascend()");
    }
    int skipper = -1;
    for (int q = 0; q < static_cast<int>(v.size()) && skipper < 0; ++q)
      if (v[q].code) skipper = q;
    if (skipper >= 0) {  // every rank skips the step a rank had to skip (per-worker mode: its own g)
      opt_->cancel();
      if (!r.skipped) {
        r.skipped = true;
        r.perturbed = false;
        r.perturbation_norm = 0;
        r.reason = skip_reason::nonfinite_gradient;
      }
      report_ = r;
      phase_ = phase::skipped;
      return r;
    }
    if (sharded() && r.perturbed) gather_weights();
    report_ = r;
    phase_ = phase::ascended;
    return r;
  }

  /// Second half (collective), as `sharpness_aware::descend` (with g_adv, or g on an unperturbed
  /// step, in the views).
  step_report descend(const step_args& args = {}) {
    if (phase_ == phase::idle && Optimizer::perturbs)
      throw usage_error("flatmin::data_parallel: descend() called without a matching ascend()");
    if (phase_ == phase::skipped) {
      phase_ = phase::idle;
      return report_;
    }
    if constexpr (selects_samples)
      if (phase_ == phase::ascended && report_.perturbed && !selection_)
        throw usage_error("flatmin::data_parallel: descend() after a perturbed ascend() needs select() "
                          "first (ESAM's data selection is global over the ranks)");
    step_args a;
    try {
      a = agree_args(args);  // throws alike on every rank
    } catch (...) {
      cancel();
      throw;
    }
    if (options_.average_gradients) {
      const auto& w = selection_ ? selection_ : batches_;  // ESAM: the selected samples' counts
      average(!sharded(), counts_of(w), w ? w->total : 0);
    }
    selection_.reset();
    std::exception_ptr err;
    step_report r;
    try {
      r = opt_->descend(a);
    } catch (...) {
      err = std::current_exception();
    }
    if (sharded()) gather_weights();  // the shards updated, or restored by a skip or an exception
    phase_ = phase::idle;
    const auto v = exchange(err, 0, 0.0);
    const int failed = first_failed(v);
    if (failed >= 0) rethrow(err, v, failed, "descend()");
    report_ = r;
    return r;
  }

  /// One whole step with the closure protocol (collective): `obj()` writes this rank's gradient at
  /// the current weights and returns its loss (at w, then at w + ε). The report's `loss` is the
  /// rank-ordered mean of the ranks' losses. If the objective throws on any rank, every rank
  /// restores its weights and throws (the original exception there, peer_error elsewhere).
  template <class O>
  step_report step(O&& obj, const step_args& args = {}) {
    static_assert(
        !requires(Optimizer & o, std::remove_reference_t<O> & ob) {
          o.mask_state().before_gradient(o.mask(), o.layout(), std::size_t{1}, ob);
          ob.example_gradient(std::size_t{0});
        },
        "flatmin::data_parallel::step: per-example objectives for a mask's estimate (SSAM-F) are "
        "not distributed (each rank would select its own mask)");
    if (phase_ != phase::idle)
      throw usage_error("flatmin::data_parallel: step() called between ascend() and descend()");
    double loss = 0;
    std::exception_ptr err;
    try {
      loss = opt_->descent().first_gradient(obj);
    } catch (...) {
      err = std::current_exception();
    }
    auto v = exchange(err, 0, loss);
    int failed = first_failed(v);
    if (failed >= 0) rethrow(err, v, failed, "the objective at w");
    double mean_loss = comm::rank_ordered_mean<double>(size(), [&](int q) { return v[q].value; });
    step_report r = ascend(args);
    if (batches_) {  // the losses weighted by the batch sizes, as the gradients
      std::vector<double> losses(v.size());
      for (std::size_t q = 0; q < v.size(); ++q) losses[q] = v[q].value;
      comm::rank_ordered_mean_into(&mean_loss, losses.data(), size(), 1, 1, batches_->counts.data(),
                                   batches_->total);
    }
    if constexpr (Optimizer::perturbs) {
      if (r.perturbed) {
        if constexpr (selects_samples)
          second_selected_gradient(obj);
        else
          perturbed_call([&] { opt_->descent().second_gradient(obj); });
      }
    }
    r = descend(args);
    r.loss = mean_loss;
    report_.loss = mean_loss;
    return r;
  }

  /// Abandons an ascended step on every rank (collective in sharded mode): weights restored.
  void cancel() {
    const bool moved = phase_ == phase::ascended && report_.perturbed;
    opt_->cancel();
    if (sharded() && moved) gather_weights();
    phase_ = phase::idle;
    selection_.reset();
  }

  /// ESAM's data selection over every rank's batch (collective; two-call protocol, between ascend()
  /// and descend(), which requires it after a perturbed ascent): `before` and `after` are this
  /// rank's per-sample losses at w and at w + ε. The increases of every rank are gathered and
  /// concatenated in rank order, and the descent policy selects over them as one process would over
  /// the concatenated batch (ties to the lower index of the concatenation). Returns this rank's
  /// part of the selection, as ascending indices into its batch (possibly empty: then the rank's
  /// gradient views are not read). The caller then writes the gradient of the mean loss over those
  /// samples into the views, and descend() averages the ranks' subset gradients weighted by their
  /// counts (comm::rank_ordered_mean_into with the counts): the gradient of the mean over every
  /// selected sample.
  /// Throws on every rank if the sizes of `before` and `after` differ on any rank, or if every batch
  /// is empty.
  const std::vector<std::size_t>& select(std::span<const double> before, std::span<const double> after)
    requires selects_samples
  {
    if (phase_ != phase::ascended || !report_.perturbed)
      throw usage_error("flatmin::data_parallel: select() needs a perturbed ascend() before it");
    if (selection_) throw usage_error("flatmin::data_parallel: select() called twice in one step");
    std::exception_ptr err;
    try {
      if (before.size() != after.size() || before.size() > std::size_t{1} << 30)
        throw std::invalid_argument("flatmin::data_parallel::select: " + std::to_string(before.size()) +
                                    " losses at w but " + std::to_string(after.size()) + " at w + eps");
      Optimizer::descent_type::increases(before, after, increases_);
    } catch (...) {
      err = std::current_exception();
    }
    const auto v = exchange(err, static_cast<int>(increases_.size()), 0.0);
    const int failed = first_failed(v);
    if (failed >= 0) rethrow(err, v, failed, "select()");
    const std::size_t P = v.size(), me = static_cast<std::size_t>(rank());
    std::size_t most = 0, first = 0, total = 0;
    for (std::size_t q = 0; q < P; ++q) {
      const auto n = static_cast<std::size_t>(v[q].code);
      most = std::max(most, n);
      if (q < me) first += n;
      total += n;
    }
    if (total == 0)
      throw std::invalid_argument("flatmin::data_parallel::select: every rank's batch is empty");
    std::vector<double> send(most, 0.0), all(most * P);
    std::copy(increases_.begin(), increases_.end(), send.begin());
    ctx_->gather(send.data(), all.data(), most * sizeof(double));
    std::vector<double> concat;
    concat.reserve(total);
    for (std::size_t q = 0; q < P; ++q) {
      const auto from = all.begin() + static_cast<std::ptrdiff_t>(q * most);
      concat.insert(concat.end(), from, from + v[q].code);
    }
    auto& d = opt_->descent();
    const std::vector<std::size_t>& chosen = d.select_increases(concat);  // global, ascending
    rank_counts s;
    s.counts.assign(P, 0.0);
    std::vector<std::size_t> mine;
    std::size_t q = 0, end = static_cast<std::size_t>(v[0].code);
    for (const std::size_t i : chosen) {
      while (i >= end) end += static_cast<std::size_t>(v[++q].code);
      s.counts[q] += 1;
      if (q == me) mine.push_back(i - first);
    }
    s.total = static_cast<double>(chosen.size());
    d.selected_ = std::move(mine);  // this rank's part replaces the global list (`chosen`)
    selection_ = std::move(s);
    return d.selected_;
  }

  /// Writes this rank's optimizer state (sharded: its shard's) after a header: "FLATMIND", the
  /// rank, the rank count and the mode. Not collective.
  void save(std::ostream& os) {
    if (phase_ != phase::idle) throw usage_error("flatmin::data_parallel: save() called between steps");
    const std::uint32_t h[3] = {static_cast<std::uint32_t>(rank()), static_cast<std::uint32_t>(size()),
                                static_cast<std::uint32_t>(options_.mode)};
    os.write(magic, 8);
    os.write(reinterpret_cast<const char*>(h), sizeof h);
    opt_->save(os);
  }

  /// Collective: restores what save() wrote on this rank (sharded: the same rank of a run with as
  /// many ranks). All or nothing over the ranks: if any rank fails, all keep their state and throw
  /// (std::invalid_argument where it failed, peer_error elsewhere).
  void load(std::istream& is) {
    if (phase_ != phase::idle) throw usage_error("flatmin::data_parallel: load() called between steps");
    std::stringstream before;
    opt_->save(before);
    std::exception_ptr err;
    try {
      char m[8] = {};
      std::uint32_t h[3] = {};
      is.read(m, 8);
      is.read(reinterpret_cast<char*>(h), sizeof h);
      if (!is || std::memcmp(m, magic, 8) != 0)
        throw std::invalid_argument("flatmin::data_parallel::load: not a data_parallel checkpoint");
      if (h[2] != static_cast<std::uint32_t>(options_.mode))
        throw std::invalid_argument(std::string("flatmin::data_parallel::load: a checkpoint of mode ") +
                                    to_string(static_cast<parallel_mode>(h[2])) + ", this run is " +
                                    to_string(options_.mode));
      if (sharded() &&
          (h[0] != static_cast<std::uint32_t>(rank()) || h[1] != static_cast<std::uint32_t>(size())))
        throw std::invalid_argument("flatmin::data_parallel::load: the shard of rank " +
                                    std::to_string(h[0]) + " of " + std::to_string(h[1]) +
                                    ", loaded on rank " + std::to_string(rank()) + " of " +
                                    std::to_string(size()) + " (sharded checkpoints need the same ranks)");
      opt_->load(is);
    } catch (...) {
      err = std::current_exception();
    }
    const auto v = exchange(err, 0, 0.0);
    const int failed = first_failed(v);
    if (failed >= 0) {
      if (!err) opt_->load(before);
      rethrow(err, v, failed, "load()");
    }
  }

  int rank() const { return ctx_->comm.rank(); }
  int size() const { return ctx_->comm.size(); }
  bool ascended() const { return phase_ != phase::idle; }
  std::size_t steps() const { return opt_->steps(); }
  const step_report& last_report() const { return report_; }
  const data_parallel_options& options() const { return options_; }
  /// This rank's optimizer (sharded: over its shard). Options changed through it between steps
  /// must be changed alike on every rank.
  Optimizer& local() { return *opt_; }
  const Optimizer& local() const { return *opt_; }
  /// This rank's range [first, last) of the flat index space: its shard (sharded mode) or the slice
  /// it adds up when averaging.
  std::pair<std::size_t, std::size_t> owned() const {
    return {bounds_[static_cast<std::size_t>(rank())], bounds_[static_cast<std::size_t>(rank()) + 1]};
  }
  /// Bytes this rank has sent to other ranks so far (payload of every collective, padding included).
  std::uint64_t bytes_sent() const { return ctx_->sent; }
  /// ESAM: how many of this step's selected samples each rank holds (rank order), from select()
  /// (or inside step(), from the selection on) until descend() or cancel(); empty otherwise. For a
  /// caller that averages g_adv itself (`average_gradients = false`): weight rank r's subset mean
  /// by counts[r] / Σ counts, as descend() does (comm::rank_ordered_mean_into with the counts).
  const std::vector<double>& selected_counts() const {
    static const std::vector<double> none;
    return selection_ ? selection_->counts : none;
  }

  /// This rank's batch size (its number of samples) for the steps that follow, until changed;
  /// std::nullopt (the default) on every rank: the ranks' gradients count alike (the plain
  /// rank-ordered mean). Set on every rank, g and g_adv are averaged weighted by the batch sizes,
  /// Σ_r n_r g_r / Σ_r n_r (comm::rank_ordered_mean_into with the counts): the gradient of the mean
  /// over the concatenated batch when each rank's gradient is the mean over its own batch. A rank
  /// with n = 0 adds nothing (its views are not read). The closure protocol's loss is weighted
  /// alike; ESAM's g_adv is weighted by the selected samples instead. Set on some ranks only, or
  /// 0 on every rank: the next ascend() / descend() / step() throws std::invalid_argument on every
  /// rank (descend(): after restoring the weights, as cancel()). Not collective.
  void set_batch_size(std::optional<std::size_t> n) { batch_ = n; }

 private:
  enum class phase { idle, ascended, skipped };
  static constexpr char magic[9] = "FLATMIND";

  /// The communicator and the statistics hook, on the heap so that moving the wrapper keeps the
  /// optimizer's pointer to the hook valid.
  struct context final : stats_reducer {
    explicit context(Comm c) : comm(std::move(c)) {}
    /// The ranks' partial counts (a compact mask's range differs between shards), then the
    /// partials padded to the largest count, added in rank order from zero.
    kernels::grad_stats combine(const kernels::grad_stats* p, std::size_t count) override {
      const std::size_t P = static_cast<std::size_t>(comm.size());
      const std::uint64_t mine = count;
      std::vector<std::uint64_t> counts(P);
      gather(&mine, counts.data(), sizeof mine);
      const std::size_t most = static_cast<std::size_t>(*std::max_element(counts.begin(), counts.end()));
      kernels::grad_stats total{};
      if (most == 0) return total;
      std::vector<kernels::grad_stats> send(most), all(most * P);
      std::copy(p, p + count, send.begin());
      gather(send.data(), all.data(), most * sizeof(kernels::grad_stats));
      for (std::size_t r = 0; r < P; ++r)
        for (std::size_t i = 0; i < counts[r]; ++i) total = total + all[r * most + i];
      return total;
    }
    std::vector<std::uint64_t> gather_counts(const std::uint64_t* mine, std::size_t count) override {
      std::vector<std::uint64_t> all(count * static_cast<std::size_t>(comm.size()));
      if (count) gather(mine, all.data(), count * sizeof(std::uint64_t));
      return all;
    }
    std::size_t position() const override { return static_cast<std::size_t>(comm.rank()); }
    origin_t origin() const override { return first; }
    /// All-gather of n bytes in host memory (staged through a device buffer for a device
    /// communicator).
    void gather(const void* s, void* r, std::size_t n) {
      if constexpr (comm_space == memory_space::device) {
        const std::size_t P = static_cast<std::size_t>(comm.size());
        stage.resize(n * (P + 1));
        unsigned char* d = backend_t::data(stage);
        backend_t::upload(static_cast<const unsigned char*>(s), n, d);
        gather_buffers(d, d + n, n);
        backend_t::download(d + n, n * P, static_cast<unsigned char*>(r));
      } else {
        gather_buffers(s, r, n);
      }
    }
    /// The collectives on buffers in the communicator's memory.
    void gather_buffers(const void* s, void* r, std::size_t n) {
      comm.all_gather(s, r, n);
      sent += static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(comm.size() - 1);
    }
    void to_all(const void* s, void* r, std::size_t n) {
      comm.all_to_all(s, r, n);
      sent += static_cast<std::uint64_t>(n) * static_cast<std::uint64_t>(comm.size() - 1);
    }
    Comm comm;
    buffer<unsigned char> stage;        ///< gather()'s staging buffer (device communicator)
    origin_t first;                     ///< this rank's shard: its first flat index and tensor
    std::uint64_t sent = 0;
  };

  /// What each rank tells the others after a call that may fail locally.
  struct vote {
    std::int32_t failed;  ///< 0: no exception; 1: an exception; 2: non_finite_error
    std::int32_t code;    ///< the call's outcome (ascend: 1 = skipped)
    double value;         ///< a number to share (the loss)
    char what[112];       ///< the start of the exception's message
  };

  struct flat_view {
    W* w;
    G* g;
    std::size_t offset;
    std::size_t size;
  };

  bool sharded() const { return options_.mode == parallel_mode::sharded; }
  /// A fixed-size field up to its first NUL.
  static std::string text(const char* s, std::size_t n) { return std::string(s, std::find(s, s + n, '\0')); }

  std::vector<vote> exchange(const std::exception_ptr& err, int code, double value) {
    vote mine{};
    mine.code = code;
    mine.value = value;
    if (err) {
      mine.failed = 1;
      try {
        std::rethrow_exception(err);
      } catch (const non_finite_error& e) {
        mine.failed = 2;
        std::strncpy(mine.what, e.what(), sizeof mine.what - 1);
      } catch (const std::exception& e) {
        std::strncpy(mine.what, e.what(), sizeof mine.what - 1);
      } catch (...) {
        std::strncpy(mine.what, "an exception not derived from std::exception", sizeof mine.what - 1);
      }
    }
    std::vector<vote> all(static_cast<std::size_t>(size()));
    ctx_->gather(&mine, all.data(), sizeof(vote));
    return all;
  }
  static int first_failed(const std::vector<vote>& v) {
    for (std::size_t q = 0; q < v.size(); ++q)
      if (v[q].failed) return static_cast<int>(q);
    return -1;
  }
  [[noreturn]] static void rethrow(const std::exception_ptr& err, const std::vector<vote>& v, int q,
                                   const char* where) {
    if (err) std::rethrow_exception(err);
    const std::string msg = std::string("flatmin::data_parallel: ") + where + " failed on rank " +
                            std::to_string(q) + ": " + text(v[q].what, sizeof v[q].what);
    if (v[q].failed == 2) throw non_finite_error(msg);
    throw peer_error(q, msg);
  }
  /// The closure protocol's gradient at w + ε (`f`), voted: on a failure anywhere every rank
  /// cancels the step and throws.
  template <class F>
  void perturbed_call(const F& f) {
    run_agreed(f, "the objective at w + eps", [&] { cancel(); });
  }
  /// ESAM's closure step at w + ε: the rank's losses, the global selection, the rank's subset
  /// gradient (not asked for when the rank has no selected sample).
  template <class O>
  void second_selected_gradient(O& obj) {
    auto& d = opt_->descent();
    std::vector<double> after;
    perturbed_call([&] {
      after.assign(d.before_.size(), 0.0);
      obj.losses(std::span<double>(after));
    });
    try {
      select(d.before_, after);
    } catch (...) {  // thrown on every rank alike
      cancel();
      throw;
    }
    perturbed_call([&] {
      if (!d.selected_.empty()) obj.subset_gradient(std::span<const std::size_t>(d.selected_));
    });
  }

  /// Runs `f` (local work that may throw), then votes: if any rank threw, every rank calls
  /// `undo()` and throws (`where` names the call in the other ranks' peer_error).
  template <class F, class Undo = void (*)()>
  void run_agreed(const F& f, const char* where = "construction", const Undo& undo = [] {}) {
    std::exception_ptr err;
    try {
      f();
    } catch (...) {
      err = std::current_exception();
    }
    const auto v = exchange(err, 0, 0.0);
    const int q = first_failed(v);
    if (q >= 0) {
      undo();
      rethrow(err, v, q, where);
    }
  }

  /// found_inf on any rank holds for all (and is known to all only if every rank set it); the
  /// grad_scale must be the same everywhere.
  step_args agree_args(const step_args& a) {
    struct flag {
      double scale;
      double batch;        // set_batch_size(), or -1
      std::int32_t state;  // 0: unset, 1: false, 2: true
      std::int32_t pad;
    };
    const flag mine{a.grad_scale, batch_ ? static_cast<double>(*batch_) : -1.0,
                    a.found_inf ? (*a.found_inf ? 2 : 1) : 0, 0};
    std::vector<flag> all(static_cast<std::size_t>(size()));
    ctx_->gather(&mine, all.data(), sizeof(flag));
    agree_batches(all);
    step_args out = a;
    bool any_true = false, all_set = true;
    for (std::size_t q = 0; q < all.size(); ++q) {
      if (std::memcmp(&all[q].scale, &all[0].scale, sizeof(double)) != 0)
        throw std::invalid_argument("flatmin::data_parallel: step_args::grad_scale differs between rank 0 (" +
                                    std::to_string(all[0].scale) + ") and rank " + std::to_string(q) + " (" +
                                    std::to_string(all[q].scale) + ")");
      any_true = any_true || all[q].state == 2;
      all_set = all_set && all[q].state != 0;
    }
    if (any_true)
      out.found_inf = true;
    else if (all_set)
      out.found_inf = false;
    else
      out.found_inf.reset();
    return out;
  }

  /// The ranks' batch sizes (set_batch_size) into batches_: all set or none (every rank sees the
  /// same values, so every rank throws alike).
  template <class Flag>
  void agree_batches(const std::vector<Flag>& all) {
    int with = -1, without = -1;
    double total = 0;
    for (std::size_t q = 0; q < all.size(); ++q) {
      if (all[q].batch < 0) {
        if (without < 0) without = static_cast<int>(q);
      } else {
        if (with < 0) with = static_cast<int>(q);
        total += all[q].batch;
      }
    }
    if (with < 0) {
      batches_.reset();
      return;
    }
    if (without >= 0)
      throw std::invalid_argument(
          "flatmin::data_parallel: a batch size on some ranks only (set_batch_size): rank " +
          std::to_string(with) + " has one, rank " + std::to_string(without) + " has none");
    if (!(total > 0))
      throw std::invalid_argument("flatmin::data_parallel: every rank's batch is empty (set_batch_size(0))");
    rank_counts c;
    c.counts.resize(all.size());
    for (std::size_t q = 0; q < all.size(); ++q) c.counts[q] = all[q].batch;
    c.total = total;
    batches_ = std::move(c);
  }

  /// Every rank's tensor table against rank 0's: count, then (name, size, flags) per tensor.
  void check_same_tables(const param_set<W, G>& params) {
    struct sig {
      std::uint64_t size;
      std::uint64_t name_hash;
      std::uint32_t flags;
      std::uint32_t name_len;
      char name[48];
    };
    const std::uint64_t n = params.size();
    std::vector<std::uint64_t> counts(static_cast<std::size_t>(size()));
    ctx_->gather(&n, counts.data(), sizeof n);
    for (std::size_t q = 1; q < counts.size(); ++q)
      if (counts[q] != counts[0])
        throw std::invalid_argument("flatmin::data_parallel: rank " + std::to_string(q) + " has " +
                                    std::to_string(counts[q]) + " tensors, rank 0 has " +
                                    std::to_string(counts[0]));
    std::vector<sig> mine(n), all(n * counts.size());
    for (std::size_t t = 0; t < n; ++t) {
      const auto& v = params[t];
      std::uint64_t h = 14695981039346656037ull;  // FNV-1a
      for (unsigned char ch : v.name) h = (h ^ ch) * 1099511628211ull;
      mine[t] = sig{v.size, h, v.flags(), static_cast<std::uint32_t>(v.name.size()), {}};
      std::strncpy(mine[t].name, v.name.c_str(), sizeof mine[t].name - 1);
    }
    if (n) ctx_->gather(mine.data(), all.data(), n * sizeof(sig));
    for (std::size_t q = 1; q < counts.size(); ++q)
      for (std::size_t t = 0; t < n; ++t) {
        const sig& a = all[t];
        const sig& b = all[q * n + t];
        if (a.size == b.size && a.name_hash == b.name_hash && a.flags == b.flags && a.name_len == b.name_len)
          continue;
        const auto describe = [](const sig& s) {
          return detail::quote(text(s.name, sizeof s.name) + (s.name_len >= sizeof s.name ? "..." : "")) +
                 ", " + std::to_string(s.size) + " elements, flags " + std::to_string(s.flags);
        };
        throw std::invalid_argument("flatmin::data_parallel: tensor " + std::to_string(t) + " of rank " +
                                    std::to_string(q) + " (" + describe(b) + ") differs from rank 0's (" +
                                    describe(a) + ")");
      }
  }

  /// Shard r: segments [first_r, first_{r+1}) of the one-process segment list, about N/P elements
  /// each, at least one each; the rank's optimizer runs over views of its shard's pieces, whose
  /// segments are then exactly the one-process segments of the shard.
  void make_shards(const param_set<W, G>& params) {
    using backend_t = typename Optimizer::backend_type;
    const auto table = backend::make_tensor_table(params);
    const auto segs = backend::make_segments(table, backend_t::segment_size);
    const std::size_t P = static_cast<std::size_t>(size()), ns = segs.size();
    if (ns < P)
      throw std::invalid_argument("flatmin::data_parallel: sharded mode needs a segment (" +
                                  std::to_string(backend_t::segment_size) +
                                  " elements of a tensor) per rank: " + std::to_string(ns) +
                                  " segments for " + std::to_string(P) + " ranks");
    std::vector<std::size_t> first(P + 1, ns);
    first[0] = 0;
    for (std::size_t r = 1; r < P; ++r) {
      const std::size_t target = numel_ * r / P;
      std::size_t s = first[r - 1] + 1;
      while (s < ns - (P - r) && segs[s].index < target) ++s;
      first[r] = s;
    }
    bounds_.assign(P + 1, numel_);
    for (std::size_t r = 0; r < P; ++r) {
      bounds_[r] = segs[first[r]].index;
    }
    const std::size_t me = static_cast<std::size_t>(rank());
    const std::size_t lo = bounds_[me], hi = bounds_[me + 1];
    ctx_->first = {lo, segs[first[me]].tensor};
    for (std::size_t t = 0; t < params.size(); ++t) {
      const auto& v = params[t];
      const std::size_t a = std::max(lo, views_[t].offset), b = std::min(hi, views_[t].offset + v.size);
      if (a >= b) continue;
      const std::size_t k = a - views_[t].offset;
      auto& sv = shard_params_.add(v.name, v.value + k, v.grad + k, {b - a}, v.options, v.space);
      sv.extra_flags = v.extra_flags;
    }
  }

  /// Calls f(view, first element in the view, count, flat index) for the pieces of [a, b).
  template <class F>
  void pieces(std::size_t a, std::size_t b, const F& f) const {
    if (a >= b) return;
    std::size_t t = static_cast<std::size_t>(
        std::upper_bound(views_.begin(), views_.end(), a,
                         [](std::size_t x, const flat_view& v) { return x < v.offset; }) -
        views_.begin() - 1);
    while (a < b) {
      const flat_view& v = views_[t];
      const std::size_t n = std::min(b, v.offset + v.size) - a;
      if (n) f(v, a - v.offset, n, a);
      a += n;
      ++t;
    }
  }

  std::size_t widest() const {
    std::size_t m = 1;
    for (std::size_t r = 0; r + 1 < bounds_.size(); ++r) m = std::max(m, bounds_[r + 1] - bounds_[r]);
    return m;
  }
  std::size_t bucket(std::size_t elem_bytes) const {
    const std::size_t b = options_.bucket_bytes / (elem_bytes * static_cast<std::size_t>(size()));
    return std::clamp<std::size_t>(b, 1, widest());
  }

  /// out[0, n) ← the rank-ordered mean (comm::rank_ordered_mean_into) of recv's P rows of `stride`;
  /// `k`: the counts in host memory, `kb`: the same in the buffers' memory.
  static void mean_into(G* out, const G* recv, int ranks, std::size_t n, std::size_t stride, const double* k,
                        const double* kb, double total) {
    if (n == 0) return;
    if constexpr (device_buffers)
      backend_t::for_each_index(
          n, comm::rank_mean_entry<G>{out, recv, kb, stride, total, ranks, comm::sole_rank(k, ranks, total)});
    else
      comm::rank_ordered_mean_into(out, recv, ranks, n, stride, k, total);
  }

  /// The gradient views ← their rank-ordered mean over the ranks (with `weight`: the count-weighted
  /// mean of total K, comm::rank_ordered_mean_into with the counts): on this rank's slice
  /// (`owned`), and on every slice when `everywhere`. A bucket's padding (past a slice's end) is
  /// sent as it is and never read.
  void average(bool everywhere, const double* weight = nullptr, double total = 0) {
    const std::size_t P = static_cast<std::size_t>(size()), me = static_cast<std::size_t>(rank());
    const std::size_t B = bucket(sizeof(G));
    // Buffers kept between calls: a fresh allocation of this size is fresh pages, and faulting
    // them in cost about as much as the averaging itself (bench_ddp).
    grad_send_.resize(P * B);
    grad_recv_.resize(P * B);
    if (everywhere) grad_mean_.resize(B);
    G* const send = backend_t::data(grad_send_);
    G* const recv = backend_t::data(grad_recv_);
    const double* kb = weight;
    if constexpr (device_buffers)
      if (weight) {
        counts_.resize(P);
        backend_t::upload(weight, P, backend_t::data(counts_));
        kb = backend_t::data(counts_);
      }
    const int ranks = static_cast<int>(P);
    for (std::size_t k = 0; k < widest(); k += B) {
      for (std::size_t j = 0; j < P; ++j)
        pieces(std::min(bounds_[j] + k, bounds_[j + 1]), std::min(bounds_[j] + k + B, bounds_[j + 1]),
               [&](const flat_view& v, std::size_t at, std::size_t n, std::size_t flat) {
                 backend_t::copy_n(v.g + at, n, send + (j * B + flat - bounds_[j] - k));
               });
      ctx_->to_all(send, recv, B * sizeof(G));
      const std::size_t lo = bounds_[me] + k, hi = std::min(lo + B, bounds_[me + 1]);
      if (!everywhere) {  // the mean straight into this rank's views
        pieces(std::min(lo, bounds_[me + 1]), hi,
               [&](const flat_view& v, std::size_t at, std::size_t n, std::size_t flat) {
                 mean_into(v.g + at, recv + (flat - lo), ranks, n, B, weight, kb, total);
               });
        continue;
      }
      G* const mean = backend_t::data(grad_mean_);
      mean_into(mean, recv, ranks, hi > lo ? hi - lo : 0, B, weight, kb, total);
      ctx_->gather_buffers(mean, recv, B * sizeof(G));
      for (std::size_t j = 0; j < P; ++j) {
        const G* src = recv + j * B;
        pieces(std::min(bounds_[j] + k, bounds_[j + 1]), std::min(bounds_[j] + k + B, bounds_[j + 1]),
               [&](const flat_view& v, std::size_t at, std::size_t n, std::size_t flat) {
                 backend_t::copy_n(src + (flat - bounds_[j] - k), n, v.g + at);
               });
      }
    }
  }

  /// The weight views ← every rank's shard (sharded mode, after this rank's shard changed).
  void gather_weights() {
    const std::size_t P = static_cast<std::size_t>(size()), me = static_cast<std::size_t>(rank());
    const std::size_t B = bucket(sizeof(W));
    weight_send_.resize(B);
    weight_recv_.resize(P * B);
    W* const mine = backend_t::data(weight_send_);
    W* const all = backend_t::data(weight_recv_);
    for (std::size_t k = 0; k < widest(); k += B) {
      pieces(std::min(bounds_[me] + k, bounds_[me + 1]), std::min(bounds_[me] + k + B, bounds_[me + 1]),
             [&](const flat_view& v, std::size_t at, std::size_t n, std::size_t flat) {
               backend_t::copy_n(v.w + at, n, mine + (flat - bounds_[me] - k));
             });
      ctx_->gather_buffers(mine, all, B * sizeof(W));
      for (std::size_t j = 0; j < P; ++j) {
        if (j == me) continue;
        pieces(std::min(bounds_[j] + k, bounds_[j + 1]), std::min(bounds_[j] + k + B, bounds_[j + 1]),
               [&](const flat_view& v, std::size_t at, std::size_t n, std::size_t flat) {
                 backend_t::copy_n(all + j * B + (flat - bounds_[j] - k), n, v.w + at);
               });
      }
    }
  }

  std::unique_ptr<context> ctx_;
  data_parallel_options options_;
  std::vector<flat_view> views_;  ///< the user's tensors in the flat index space
  std::size_t numel_ = 0;
  std::vector<std::size_t> bounds_;  ///< rank r owns [bounds_[r], bounds_[r + 1])
  param_set<W, G> shard_params_;     ///< sharded mode: views of this rank's shard
  std::optional<Optimizer> opt_;
  buffer<G> grad_send_, grad_recv_, grad_mean_;  ///< average()'s buffers, kept between steps
  buffer<W> weight_send_, weight_recv_;          ///< gather_weights()'s
  buffer<double> counts_;                        ///< average()'s counts (device buffers)
  /// The step's global data selection (select()): the selected samples per rank, and their total.
  struct rank_counts {
    std::vector<double> counts;
    double total = 0;
  };
  static const double* counts_of(const std::optional<rank_counts>& c) {
    return c ? c->counts.data() : nullptr;
  }
  std::optional<rank_counts> selection_;
  /// set_batch_size()'s value on this rank, and the batch sizes of every rank agreed by the last
  /// ascend() or descend() (none when no rank set one).
  std::optional<std::size_t> batch_;
  std::optional<rank_counts> batches_;
  std::vector<double> increases_;  ///< select()'s, this rank's
  phase phase_ = phase::idle;
  step_report report_;
};

}  // namespace flatmin
