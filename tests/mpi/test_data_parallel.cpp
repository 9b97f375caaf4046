// flatmin::data_parallel over MPI (optimizer/data_parallel.hpp, comm/), run by ctest under mpiexec
// with 1, 2 and 4 ranks. Every rank can compute every rank's gradient (a separable quadratic whose
// coefficients are a hash of rank, tensor and index), so each rank also runs the one-process
// reference in-process and compares:
// - global and sharded mode against one process fed the rank-ordered average of the ranks'
//   gradients (Σ_r g_r added in rank order in double, / P, rounded to float: written out here),
//   bitwise, weights and reports;
// - per-worker mode against a float64 re-derivation of m-sharpness (ε_r from rank r's own g), for
//   SAM and for ESAM (the selection over every rank's loss increases, g_adv count-weighted);
// - batches of different sizes (set_batch_size): one process fed the batch-size-weighted mean,
//   global and sharded, two-call and closure (the loss weighted alike), and the refusals;
// - ESAM's global data selection against one process on the concatenated batch (its selection over
//   the concatenated increases), with batches of different sizes and increases tied across ranks;
// - the faults: a non-finite gradient on one rank, tables that differ, an objective that throws on
//   one rank (a hang is the ctest TIMEOUT).
// Its Thrust twin (mpi.test_data_parallel_thrust.np<K>) runs every case on backend::thrust (a host
// device system) over `test_comm`, comm::mpi declared a communicator of device memory: the path
// comm::nccl takes under CUDA (buffers in the backend's vectors, copies and means by the backend,
// the host messages staged through device buffers), checked against the same references.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <mpi.h>

#include "support/rank_quadratic.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <flatmin/comm/callbacks.hpp>
#include <flatmin/comm/mpi.hpp>
#include <flatmin/flatmin.hpp>
#include <flatmin/optimizer/data_parallel.hpp>
#include <limits>
#include <span>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

#if defined(FLATMIN_TEST_DEVICE_COMM)
struct test_comm : flatmin::comm::mpi {
  test_comm() : flatmin::comm::mpi(MPI_COMM_WORLD) {}
  static constexpr flatmin::memory_space space = flatmin::memory_space::device;
};
static_assert(flatmin::comm::space_of<test_comm> == flatmin::memory_space::device);
#else
using test_comm = flatmin::comm::mpi;
static_assert(flatmin::comm::space_of<test_comm> == flatmin::memory_space::host);
#endif

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

using namespace flatmin_test::rank_quadratic;

// The tied variant (mask selection with ties across shards): a = 1, c one of four values and w = 0
// at the start, so the squared gradients take a few values, each shared by thousands of entries in
// every shard, and the k-th largest Fisher score is tied across shard boundaries.
float tied_c(int r, std::size_t i) { return 0.25f * static_cast<float>((i + static_cast<std::size_t>(r)) % 4) - 0.5f; }

struct model {
  std::vector<std::vector<float>> w, g;
  flatmin::param_set<float> ps;
  bool tied = false;
  explicit model(std::size_t odd_size = 0, bool tie = false) : w(sizes.size()), g(sizes.size()), tied(tie) {
    for (std::size_t t = 0; t < sizes.size(); ++t) {
      const std::size_t n = (t == 1 && odd_size) ? odd_size : sizes[t];
      w[t].resize(n);
      g[t].assign(n, 0.f);
      for (std::size_t i = 0; i < n; ++i) w[t][i] = tied ? 0.f : static_cast<float>(unit(key(99, t, i, 3)) - 0.5);
      flatmin::tensor_options o;
      if (t == 1) o.weight_decay = false;
      if (t == 3) o.perturb = false;
      ps.add(names[t], w[t].data(), g[t].data(), {n}, o);
    }
  }
  float a_of(int r, std::size_t t, std::size_t i) const { return tied ? 1.f : coef_a(r, t, i); }
  float c_of(int r, std::size_t t, std::size_t i) const { return tied ? tied_c(r, i) : coef_c(r, t, i); }
  float grad(int r, std::size_t t, std::size_t i) const {
    return tied ? w[t][i] - tied_c(r, i) : grad_of(r, t, i, w[t][i]);
  }
  double loss(int r) const {
    double l = 0;
    for (std::size_t t = 0; t < w.size(); ++t)
      for (std::size_t i = 0; i < w[t].size(); ++i) {
        const double d = static_cast<double>(w[t][i]) - c_of(r, t, i);
        l += 0.5 * a_of(r, t, i) * d * d;
      }
    return l;
  }
  double fill(int r) {  // this rank's gradient at w; returns its loss
    for (std::size_t t = 0; t < w.size(); ++t)
      for (std::size_t i = 0; i < w[t].size(); ++i) g[t][i] = grad(r, t, i);
    return loss(r);
  }
  void fill_average(int P) {  // the one-process gradient: rank-ordered mean, in double, rounded once
    for (std::size_t t = 0; t < w.size(); ++t)
      for (std::size_t i = 0; i < w[t].size(); ++i) {
        double s = grad(0, t, i);
        for (int r = 1; r < P; ++r) s += grad(r, t, i);
        g[t][i] = static_cast<float>(s / P);
      }
  }
};

bool same_weights(const model& a, const model& b) {
  for (std::size_t t = 0; t < a.w.size(); ++t)
    if (std::memcmp(a.w[t].data(), b.w[t].data(), a.w[t].size() * sizeof(float)) != 0) return false;
  return true;
}
bool same_norm(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// Sharded: the mask of every piece of this rank's shard (the local optimizer's tensors, in order)
// equals the one-process mask over the same entries.
template <class DP, class Opt>
void check_shard_masks(const DP& dp, const Opt& one) {
  const auto [lo, hi] = dp.owned();
  std::size_t offset = 0, local = 0;
  for (std::size_t t = 0; t < sizes.size(); ++t) {
    const std::size_t a = std::max(lo, offset), b = std::min(hi, offset + sizes[t]);
    if (a < b) {
      const auto whole = one.mask_bytes(t);
      const std::vector<std::uint8_t> expect(whole.begin() + static_cast<std::ptrdiff_t>(a - offset),
                                             whole.begin() + static_cast<std::ptrdiff_t>(b - offset));
      CHECK(dp.local().mask_bytes(local) == expect);
      ++local;
    }
    offset += sizes[t];
  }
  CHECK(local == dp.local().layout().tensor_count());
}

// `steps` steps of Opt built from make(), distributed in `mode` over `comm` (two-call protocol, or
// the closure protocol when `closure`) and in one process on the average, compared bitwise (and,
// sharded, the masks each step).
template <class Opt, bool closure = false, class Comm, class Make>
void check_one_process(const Make& make, flatmin::parallel_mode mode, Comm comm, int steps, bool tied = false,
                       std::size_t bucket_bytes = std::size_t{16} << 20) {
  const int P = world_size(), me = world_rank();
  model dist(0, tied), ref(0, tied);
  flatmin::data_parallel<Opt, Comm> dp(dist.ps, make(), std::move(comm), {.mode = mode, .bucket_bytes = bucket_bytes});
  Opt one(ref.ps, make());
  for (int s = 0; s < steps; ++s) {
    flatmin::step_report rd, rr;
    double loss_sum = dist.loss(0);  // the report's loss: the ranks' losses at w, in rank order
    for (int r = 1; r < P; ++r) loss_sum += dist.loss(r);
    if constexpr (closure) {
      rd = dp.step([&] { return dist.fill(me); });
    } else {
      dist.fill(me);
      rd = dp.ascend();
      dist.fill(me);
      rd = dp.descend();
    }
    ref.fill_average(P);
    rr = one.ascend();
    ref.fill_average(P);
    rr = one.descend();
    CHECK(same_norm(rd.grad_norm, rr.grad_norm));
    CHECK(same_norm(rd.perturbed_grad_norm, rr.perturbed_grad_norm));
    CHECK(same_norm(rd.perturbation_norm, rr.perturbation_norm));
    CHECK(rd.mask_density == rr.mask_density);
    CHECK_FALSE(rd.skipped);
    if (closure) CHECK(rd.loss == loss_sum / P);
    if (mode == flatmin::parallel_mode::sharded) check_shard_masks(dp, one);
  }
  CHECK(same_weights(dist, ref));
  CHECK(dp.steps() == one.steps());
}

template <class Base>
auto sam_make(Base b) {
  return [b] { return flatmin::sam_options{.rho = 0.05}.compose<flatmin::perturb::l2>(b); };
}

using sam_sgd = flatmin::sam_t<float, flatmin::base::sgd>;
using sam_adamw = flatmin::sam_t<float, flatmin::base::adamw>;
const flatmin::base::sgd sgd_momentum{.lr = 0.05, .momentum = 0.9, .weight_decay = 1e-3};
const flatmin::base::adamw adamw{.lr = 1e-2, .weight_decay = 1e-2};

// ESAM's data selection over the ranks. Rank r holds n_r samples (3 on even ranks, 5 on odd ones:
// the batches differ in size); sample j's loss is ½ Σ a (w − c − d_rj)² with rank 0's a and c for
// every rank and an offset d_rj. With `ties` the offsets take three values shared by every rank,
// so loss increases tie across ranks and the tie-break (the lower index of the concatenated batch)
// decides which samples are kept.
struct samples {
  model& m;
  bool ties = false;
  static std::size_t count(int r) { return r % 2 ? 5 : 3; }
  double offset(int r, std::size_t j) const {
    if (ties) return 0.1 * static_cast<double>((static_cast<std::size_t>(r) + 2 * j) % 3) - 0.1;
    return 0.3 * unit(key(r, 0, j, 7)) - 0.15;
  }
  // Rank r's per-sample losses at the current weights.
  std::vector<double> losses(int r) const {
    std::vector<double> out(count(r), 0.0);
    for (std::size_t j = 0; j < out.size(); ++j) {
      const double d = offset(r, j);
      for (std::size_t t = 0; t < m.w.size(); ++t)
        for (std::size_t i = 0; i < m.w[t].size(); ++i) {
          const double e = static_cast<double>(m.w[t][i]) - coef_c(0, t, i) - d;
          out[j] += 0.5 * coef_a(0, t, i) * e * e;
        }
    }
    return out;
  }
  // The gradient of the mean loss over rank r's samples `idx`, in float, into `out`.
  void subset_gradient(int r, std::span<const std::size_t> idx, std::vector<std::vector<float>>& out) const {
    double mean = 0;
    for (const std::size_t j : idx) mean += offset(r, j);
    mean /= static_cast<double>(idx.size());
    out.resize(m.w.size());
    for (std::size_t t = 0; t < m.w.size(); ++t) {
      out[t].resize(m.w[t].size());
      for (std::size_t i = 0; i < m.w[t].size(); ++i)
        out[t][i] = static_cast<float>(coef_a(0, t, i) * (static_cast<double>(m.w[t][i]) - coef_c(0, t, i) - mean));
    }
  }
  static std::vector<std::size_t> all(int r) {
    std::vector<std::size_t> idx(count(r));
    for (std::size_t j = 0; j < idx.size(); ++j) idx[j] = j;
    return idx;
  }
};

// Rank r's sample objective (flatmin::sample_objective) over the model's gradient views.
struct sample_objective {
  samples& s;
  int r;
  std::size_t batch_size() const { return samples::count(r); }
  double losses_and_gradient(std::span<double> out) {
    const auto l = s.losses(r);
    std::copy(l.begin(), l.end(), out.begin());
    s.subset_gradient(r, samples::all(r), s.m.g);
    double mean = 0;
    for (double x : l) mean += x;
    return mean / static_cast<double>(l.size());
  }
  void losses(std::span<double> out) {
    const auto l = s.losses(r);
    std::copy(l.begin(), l.end(), out.begin());
  }
  void subset_gradient(std::span<const std::size_t> idx) { s.subset_gradient(r, idx, s.m.g); }
};

// ESAM's selection distributed in `mode` (closure or two-call protocol) against one process on the
// concatenated batch: the one-process policy selects over the concatenated increases; g is the
// rank-ordered mean of the ranks' batch gradients (as in global mode) and g_adv the selected
// ranks' subset gradients weighted by their counts, Σ k_r m_r / K in double, rounded once (written
// out here). Compared bitwise: weights, reports, and each rank's part of the selection. The
// weighted form is also checked against a float64 gradient of the mean over the selected samples.
template <class Opt, bool closure, class Make>
void check_selection(const Make& make, flatmin::parallel_mode mode, int steps, bool ties,
                     std::size_t bucket_bytes = std::size_t{16} << 20) {
  const int P = world_size(), me = world_rank();
  model dist, ref;
  samples sd{dist, ties}, sr{ref, ties};
  flatmin::data_parallel<Opt, test_comm> dp(dist.ps, make(), test_comm{},
                                                     {.mode = mode, .bucket_bytes = bucket_bytes});
  Opt one(ref.ps, make());
  std::vector<std::vector<float>> part;
  std::vector<std::vector<std::vector<float>>> m(static_cast<std::size_t>(P));
  const auto set_ref_gradient = [&](const std::vector<double>& k, double total) {
    for (std::size_t t = 0; t < sizes.size(); ++t)
      for (std::size_t i = 0; i < sizes[t]; ++i) {
        int only = -1;
        for (int r = 0; r < P; ++r)
          if (k[static_cast<std::size_t>(r)] == total) only = r;
        if (only >= 0) {
          ref.g[t][i] = m[static_cast<std::size_t>(only)][t][i];
          continue;
        }
        double sum = 0;
        for (int r = 0; r < P; ++r)
          if (k[static_cast<std::size_t>(r)] > 0) sum += k[static_cast<std::size_t>(r)] * m[static_cast<std::size_t>(r)][t][i];
        ref.g[t][i] = static_cast<float>(sum / total);
      }
  };
  for (int s = 0; s < steps; ++s) {
    flatmin::step_report rd, rr;
    std::vector<double> counts;
    if constexpr (closure) {
      sample_objective obj{sd, me};
      rd = dp.step(obj);
    } else {
      const auto before = sd.losses(me);
      sd.subset_gradient(me, samples::all(me), dist.g);
      rd = dp.ascend();
      const auto after = sd.losses(me);
      const auto& idx = dp.select(before, after);
      if (!idx.empty()) sd.subset_gradient(me, idx, dist.g);
      counts = dp.selected_counts();
      rd = dp.descend();
      CHECK(dp.selected_counts().empty());
    }
    const std::vector<std::size_t> got = dp.local().descent().selected();
    // The one-process run on the concatenated batch.
    std::vector<double> before, after;
    std::vector<std::size_t> first(static_cast<std::size_t>(P) + 1, 0);
    for (int r = 0; r < P; ++r) {
      const auto l = sr.losses(r);
      before.insert(before.end(), l.begin(), l.end());
      first[static_cast<std::size_t>(r) + 1] = first[static_cast<std::size_t>(r)] + l.size();
      sr.subset_gradient(r, samples::all(r), m[static_cast<std::size_t>(r)]);
    }
    set_ref_gradient(std::vector<double>(static_cast<std::size_t>(P), 1.0), P);  // the plain mean
    rr = one.ascend();
    for (int r = 0; r < P; ++r) {
      const auto l = sr.losses(r);
      after.insert(after.end(), l.begin(), l.end());
    }
    const std::vector<std::size_t> sel = one.descent().select(before, after);
    std::vector<double> k(static_cast<std::size_t>(P), 0.0);
    std::vector<std::size_t> expect;
    for (int r = 0; r < P; ++r) {
      std::vector<std::size_t> local;
      for (const std::size_t i : sel)
        if (i >= first[static_cast<std::size_t>(r)] && i < first[static_cast<std::size_t>(r) + 1])
          local.push_back(i - first[static_cast<std::size_t>(r)]);
      k[static_cast<std::size_t>(r)] = static_cast<double>(local.size());
      if (r == me) expect = local;
      if (!local.empty()) sr.subset_gradient(r, local, m[static_cast<std::size_t>(r)]);
    }
    set_ref_gradient(k, static_cast<double>(sel.size()));
    if (!closure) CHECK(counts == k);
    // float64: the gradient of the mean over the selected samples of the concatenated batch.
    double mean_offset = 0, worst = 0;
    for (int r = 0; r < P; ++r)
      for (const std::size_t i : sel)
        if (i >= first[static_cast<std::size_t>(r)] && i < first[static_cast<std::size_t>(r) + 1])
          mean_offset += sr.offset(r, i - first[static_cast<std::size_t>(r)]);
    mean_offset /= static_cast<double>(sel.size());
    for (std::size_t t = 0; t < sizes.size(); ++t)
      for (std::size_t i = 0; i < sizes[t]; ++i) {
        const double exact = coef_a(0, t, i) * (static_cast<double>(ref.w[t][i]) - coef_c(0, t, i) - mean_offset);
        worst = std::max(worst, std::abs(ref.g[t][i] - exact) / (1e-3 + std::abs(exact)));
      }
    CHECK(worst < 1e-5);
    rr = one.descend();
    CHECK(got == expect);
    if (mode == flatmin::parallel_mode::sharded) check_shard_masks(dp, one);
    CHECK(rd.mask_density == rr.mask_density);
    CHECK(same_norm(rd.grad_norm, rr.grad_norm));
    CHECK(same_norm(rd.perturbed_grad_norm, rr.perturbed_grad_norm));
    CHECK_FALSE(rd.skipped);
  }
  CHECK(same_weights(dist, ref));
}

using esam_sgd = flatmin::esam_t<float, flatmin::base::sgd>;
// ESAM's data selection over a dense perturbation (what sharded mode runs).
using esam_dense =
    flatmin::sharpness_aware<float, flatmin::default_backend, flatmin::perturb::l2, flatmin::mask::dense,
                             flatmin::base::sgd, flatmin::select::sharpness_sensitive>;
auto esam_make(double gamma, bool official,
               flatmin::mask::granularity unit = flatmin::mask::granularity::tensor) {
  return [=] {
    if (official) return flatmin::esam_official_options{.gamma = gamma, .unit = unit}.compose(sgd_momentum);
    return flatmin::esam_options{.gamma = gamma, .unit = unit, .seed = 3}.compose(sgd_momentum);
  };
}
auto esam_dense_make(double gamma) {
  return [=] {
    flatmin::composition<flatmin::perturb::l2, flatmin::mask::dense, flatmin::base::sgd,
                         flatmin::select::sharpness_sensitive>
        c{.base = sgd_momentum, .perturb = {.rho = 0.05}, .descent = {.gamma = gamma}};
    return c;
  };
}

}  // namespace

TEST_CASE("global perturbation: P ranks are one process on the rank-ordered average, bitwise") {
  using M = test_comm;
  SUBCASE("SAM + SGD momentum, two-call protocol") {
    check_one_process<sam_sgd>(sam_make(sgd_momentum), flatmin::parallel_mode::global_perturbation, M{}, 4);
  }
  SUBCASE("SAM + SGD momentum, closure protocol") {
    check_one_process<sam_sgd, true>(sam_make(sgd_momentum), flatmin::parallel_mode::global_perturbation, M{},
                                     3);
  }
  SUBCASE("FSAM + Adam (Fisher mask refreshed every 2 steps)") {
    using fsam = flatmin::fsam_t<float, flatmin::base::adam>;
    const auto make = [] {
      return flatmin::fsam_options{.keep = 0.25, .refresh_every = 2}.compose(flatmin::base::adam{.lr = 1e-2});
    };
    check_one_process<fsam>(make, flatmin::parallel_mode::global_perturbation, M{}, 4);
  }
  SUBCASE("small buckets (4 KiB): many collectives per average, buckets across tensor ends") {
    for (const std::size_t bytes : {std::size_t{4096}}) {
      check_one_process<sam_sgd>(sam_make(sgd_momentum), flatmin::parallel_mode::global_perturbation, M{}, 2,
                                 false, bytes);
      check_selection<esam_sgd, true>(esam_make(0.3, false), flatmin::parallel_mode::global_perturbation, 2,
                                      false, bytes);
    }
  }
  SUBCASE("comm::callbacks over MPI_Allgather only (its all-to-all through the all-gather)") {
    flatmin::comm::callbacks cb(world_rank(), world_size(), [](const void* s, void* r, std::size_t n) {
      MPI_Allgather(s, static_cast<int>(n), MPI_BYTE, r, static_cast<int>(n), MPI_BYTE, MPI_COMM_WORLD);
    });
    check_one_process<sam_sgd>(sam_make(sgd_momentum), flatmin::parallel_mode::global_perturbation, cb, 3);
  }
}

// Batches of different sizes (data_parallel::set_batch_size): rank r holds r + 1 samples and its
// gradient is their mean, so the gradient of the concatenated batch is Σ n_r g_r / Σ n_r (added in
// rank order in double from 0, rounded once; one rank holding every sample passes unchanged:
// written out here). g and g_adv are averaged so, and the closure's loss likewise.
double batch_of(int r) { return static_cast<double>(r + 1); }
double batch_total(int P) {
  double n = 0;
  for (int r = 0; r < P; ++r) n += batch_of(r);
  return n;
}
void fill_batch_weighted(model& m, int P) {
  for (std::size_t t = 0; t < m.w.size(); ++t)
    for (std::size_t i = 0; i < m.w[t].size(); ++i) {
      if (P == 1) {
        m.g[t][i] = m.grad(0, t, i);
        continue;
      }
      double s = 0;
      for (int r = 0; r < P; ++r) s += batch_of(r) * m.grad(r, t, i);
      m.g[t][i] = static_cast<float>(s / batch_total(P));
    }
}

template <class Opt, bool closure, class Make>
void check_batches(const Make& make, flatmin::parallel_mode mode, int steps) {
  const int P = world_size(), me = world_rank();
  model dist, ref;
  flatmin::data_parallel<Opt, test_comm> dp(dist.ps, make(), test_comm{}, {.mode = mode});
  Opt one(ref.ps, make());
  dp.set_batch_size(static_cast<std::size_t>(me + 1));
  for (int s = 0; s < steps; ++s) {
    flatmin::step_report rd, rr;
    double loss = 0;
    for (int r = 0; r < P; ++r) loss += batch_of(r) * dist.loss(r);
    loss = P == 1 ? dist.loss(0) : loss / batch_total(P);
    if constexpr (closure) {
      rd = dp.step([&] { return dist.fill(me); });
      CHECK(rd.loss == loss);
    } else {
      dist.fill(me);
      rd = dp.ascend();
      dist.fill(me);
      rd = dp.descend();
    }
    fill_batch_weighted(ref, P);
    rr = one.ascend();
    fill_batch_weighted(ref, P);
    rr = one.descend();
    CHECK(same_norm(rd.grad_norm, rr.grad_norm));
    CHECK(same_norm(rd.perturbed_grad_norm, rr.perturbed_grad_norm));
    CHECK(same_norm(rd.perturbation_norm, rr.perturbation_norm));
    CHECK_FALSE(rd.skipped);
  }
  CHECK(same_weights(dist, ref));
}

TEST_CASE("batches of different sizes: g and g_adv weighted by the batch sizes, bitwise") {
  SUBCASE("global, two-call") {
    check_batches<sam_adamw, false>(sam_make(adamw), flatmin::parallel_mode::global_perturbation, 3);
  }
  SUBCASE("global, closure") {
    check_batches<sam_sgd, true>(sam_make(sgd_momentum), flatmin::parallel_mode::global_perturbation, 3);
  }
  SUBCASE("sharded, two-call") {
    check_batches<sam_adamw, false>(sam_make(adamw), flatmin::parallel_mode::sharded, 3);
  }
  SUBCASE("sharded FSAM, closure") {
    using fsam = flatmin::fsam_t<float, flatmin::base::sgd>;
    check_batches<fsam, true>(
        [] { return flatmin::fsam_options{.keep = 0.25, .refresh_every = 2}.compose(sgd_momentum); },
        flatmin::parallel_mode::sharded, 3);
  }
  SUBCASE("set on every rank or none: refused on every rank otherwise, and no sample anywhere") {
    const int P = world_size(), me = world_rank();
    model m;
    flatmin::data_parallel<sam_sgd, test_comm> dp(m.ps, sam_make(sgd_momentum)(), test_comm{});
    const auto before = m.w;
    if (P > 1) {
      if (me == 0) dp.set_batch_size(4);
      m.fill(me);
      CHECK_THROWS_WITH_AS(dp.ascend(), doctest::Contains("batch size on some ranks only"), std::invalid_argument);
      CHECK_FALSE(dp.ascended());
    }
    dp.set_batch_size(0);
    m.fill(me);
    CHECK_THROWS_WITH_AS(dp.ascend(), doctest::Contains("every rank's batch is empty"), std::invalid_argument);
    CHECK(m.w == before);
    dp.set_batch_size(std::nullopt);  // back to the plain mean
    m.fill(me);
    CHECK(dp.ascend().perturbed);
    m.fill(me);
    CHECK_FALSE(dp.descend().skipped);
  }
}

TEST_CASE("comm::none (the default): the wrapper is the plain optimizer, bitwise") {
  const int me = world_rank();
  for (const auto mode : {flatmin::parallel_mode::global_perturbation, flatmin::parallel_mode::sharded}) {
    model a, b;
    flatmin::data_parallel<sam_adamw> dp(a.ps, sam_make(adamw)(), {}, {.mode = mode});
    sam_adamw plain(b.ps, sam_make(adamw)());
    for (int s = 0; s < 3; ++s) {
      const auto ra = dp.step([&] { return a.fill(me); });
      const auto rb = plain.step([&] { return b.fill(me); });
      CHECK(same_norm(ra.grad_norm, rb.grad_norm));
      CHECK(ra.loss == rb.loss);
    }
    CHECK(same_weights(a, b));
    CHECK(dp.bytes_sent() == 0);
  }
}

TEST_CASE("sharded (ZeRO-1): P shards are one process on the rank-ordered average, bitwise") {
  using M = test_comm;
  SUBCASE("SAM + SGD momentum") {
    check_one_process<sam_sgd>(sam_make(sgd_momentum), flatmin::parallel_mode::sharded, M{}, 4);
  }
  SUBCASE("SAM + AdamW, closure protocol") {
    check_one_process<sam_adamw, true>(sam_make(adamw), flatmin::parallel_mode::sharded, M{}, 3);
  }
  SUBCASE("small buckets: the mean written straight into the shard's views, bucket by bucket") {
    for (const std::size_t bytes : {std::size_t{4096}}) {
      check_one_process<sam_adamw>(sam_make(adamw), flatmin::parallel_mode::sharded, M{}, 2, false, bytes);
      check_selection<esam_sgd, false>(esam_make(0.3, false), flatmin::parallel_mode::sharded, 2, false, bytes);
    }
  }
  SUBCASE("FSAM + Adam: the Fisher top-k is global over the shards (refreshed every 2 steps)") {
    using fsam = flatmin::fsam_t<float, flatmin::base::adam>;
    const auto make = [] {
      return flatmin::fsam_options{.keep = 0.25, .refresh_every = 2}.compose(flatmin::base::adam{.lr = 1e-2});
    };
    check_one_process<fsam>(make, flatmin::parallel_mode::sharded, M{}, 5);
  }
  SUBCASE("FSAM + SGD, closure protocol, current-batch Fisher and the official unperturbed refresh") {
    using fsam = flatmin::fsam_t<float, flatmin::base::sgd>;
    const auto make = [] {
      auto c = flatmin::fsam_options{.keep = 0.1, .refresh_every = 3}.compose(sgd_momentum);
      c.mask.source = flatmin::mask::fisher_estimator::current_batch;
      c.mask.unperturbed_refresh = true;
      return c;
    };
    check_one_process<fsam, true>(make, flatmin::parallel_mode::sharded, M{}, 4);
  }
  SUBCASE("FSAM: the k-th largest Fisher score tied across shard boundaries (ties to the lower index)") {
    using fsam = flatmin::fsam_t<float, flatmin::base::sgd>;
    for (const double keep : {0.3, 0.55, 0.9}) {
      const auto make = [keep] {
        auto c = flatmin::fsam_options{.keep = keep, .refresh_every = 1}.compose(sgd_momentum);
        c.mask.source = flatmin::mask::fisher_estimator::current_batch;
        return c;
      };
      check_one_process<fsam>(make, flatmin::parallel_mode::sharded, M{}, 2, true);
    }
  }
  SUBCASE("SSAM-D + SGD: the drop (top |g|) and the growth (random) are global over the shards") {
    using ssamd = flatmin::ssam_d_t<float, flatmin::base::sgd>;
    const auto make = [] {
      auto c = flatmin::ssam_d_options{}.compose(sgd_momentum);
      c.mask.sparsity = 0.6;
      c.mask.death_rate = 0.4;
      c.mask.refresh_every = 2;
      c.mask.seed = 7;
      return c;
    };
    check_one_process<ssamd>(make, flatmin::parallel_mode::sharded, M{}, 5);
    const auto constant = [] {
      auto c = flatmin::ssam_d_options{}.compose(sgd_momentum);
      c.mask.counts = flatmin::mask::dynamic_counts::constant;
      c.mask.refresh_every = 1;
      c.mask.total_steps = 4;
      return c;
    };
    check_one_process<ssamd, true>(constant, flatmin::parallel_mode::sharded, M{}, 4, true);
  }
  SUBCASE("FSAM and SSAM-D with block units: the compact ranges' sums and the masks are one process's") {
    // Blocks of 64 and 512 (and tensors of 300 and 7 entries: partial last blocks); the compact
    // range's partial sums are combined over the shards, whose lists differ in length. At keep 0.9
    // runs of active blocks reach across the shard boundaries inside tensor w2 (local 4096 for 2
    // ranks): the compact segments must stop at the layout's segment boundaries there.
    using fsam = flatmin::fsam_t<float, flatmin::base::sgd>;
    for (const auto& bk : {std::pair<std::size_t, double>{64, 0.2}, {512, 0.9}, {64, 0.9}}) {
      const std::size_t block = bk.first;  // (clang 14 cannot capture structured bindings)
      const double keep = bk.second;
      const auto make = [block, keep] {
        auto c = flatmin::fsam_options{.keep = keep, .refresh_every = 2}.compose(sgd_momentum);
        c.mask.block = block;
        return c;
      };
      check_one_process<fsam>(make, flatmin::parallel_mode::sharded, M{}, 4);
    }
    using ssamd = flatmin::ssam_d_t<float, flatmin::base::sgd>;
    const auto make = [] {
      auto c = flatmin::ssam_d_options{}.compose(sgd_momentum);
      c.mask.sparsity = 0.7;
      c.mask.death_rate = 0.4;
      c.mask.refresh_every = 2;
      c.mask.block = 128;
      c.mask.seed = 3;
      return c;
    };
    check_one_process<ssamd, true>(make, flatmin::parallel_mode::sharded, M{}, 5);
  }
  SUBCASE("what is not sharded is refused on every rank: random blocks, per-example Fisher") {
    model m;
    using fsam = flatmin::fsam_t<float, flatmin::base::sgd>;
    CHECK_THROWS_WITH_AS(
        (flatmin::data_parallel<esam_sgd, M>(m.ps, esam_make(0.5, false, flatmin::mask::granularity::block)(), M{},
                                             {.mode = flatmin::parallel_mode::sharded})),
        doctest::Contains("entry or tensor units"), flatmin::usage_error);
    auto per_example = flatmin::fsam_options{.keep = 0.25}.compose(sgd_momentum);
    per_example.mask.source = flatmin::mask::fisher_estimator::per_example;
    flatmin::data_parallel<fsam, M> dp(m.ps, per_example, M{}, {.mode = flatmin::parallel_mode::sharded});
    const auto before = m.w;
    m.fill(world_rank());
    CHECK_THROWS_WITH_AS(dp.ascend(), doctest::Contains("per_example estimator is not sharded"),
                         flatmin::usage_error);
    CHECK(m.w == before);
    CHECK(!dp.ascended());
  }
  SUBCASE("the shards partition the flat space in rank order, and the state is the shard's") {
    model m;
    flatmin::data_parallel<sam_adamw, M> dp(m.ps, sam_make(adamw)(), M{},
                                            {.mode = flatmin::parallel_mode::sharded});
    const auto [lo, hi] = dp.owned();
    std::size_t total = 0;
    for (auto n : sizes) total += n;
    std::uint64_t range[2] = {lo, hi}, all[8] = {};
    MPI_Allgather(range, 2, MPI_UINT64_T, all, 2, MPI_UINT64_T, MPI_COMM_WORLD);
    CHECK(all[0] == 0);
    CHECK(all[2 * world_size() - 1] == total);
    for (int r = 1; r < world_size(); ++r) CHECK(all[2 * r] == all[2 * r - 1]);
    const std::vector<std::size_t> starts = {0, 4096, 5000, 5300, 9396, 13492, 14300};  // the segments'
    CHECK(std::find(starts.begin(), starts.end(), lo) != starts.end());
    CHECK(dp.local().layout().numel() == hi - lo);
  }
}

TEST_CASE("ESAM: the data selection is global over the ranks, g_adv the count-weighted mean, bitwise") {
  using flatmin::parallel_mode;
  SUBCASE("ESAM + SGD (random tensor mask), global mode, two-call and closure") {
    check_selection<esam_sgd, false>(esam_make(0.5, false), parallel_mode::global_perturbation, 4, false);
    check_selection<esam_sgd, true>(esam_make(0.3, false), parallel_mode::global_perturbation, 3, false);
  }
  SUBCASE("the official strict cutoff, and increases tied across ranks") {
    check_selection<esam_sgd, true>(esam_make(0.5, true), parallel_mode::global_perturbation, 3, false);
    for (const double gamma : {0.2, 0.5, 0.75})
      check_selection<esam_sgd, false>(esam_make(gamma, false), parallel_mode::global_perturbation, 2, true);
    check_selection<esam_sgd, false>(esam_make(0.5, true), parallel_mode::global_perturbation, 2, true);
  }
  SUBCASE("sharded: the selection over a dense perturbation") {
    check_selection<esam_dense, true>(esam_dense_make(0.5), parallel_mode::sharded, 3, false);
    check_selection<esam_dense, false>(esam_dense_make(0.4), parallel_mode::sharded, 2, true);
  }
  SUBCASE("sharded ESAM: the random mask draws the one-process tensors (w2 split across shards) and entries") {
    check_selection<esam_sgd, true>(esam_make(0.5, false), parallel_mode::sharded, 5, false);
    check_selection<esam_sgd, false>(esam_make(0.5, true), parallel_mode::sharded, 3, true);
    check_selection<esam_sgd, true>(esam_make(0.5, false, flatmin::mask::granularity::element),
                                    parallel_mode::sharded, 3, false);
  }
  SUBCASE("the two-call protocol needs select() once between a perturbed ascend() and descend()") {
    model m;
    samples sm{m, false};
    const int me = world_rank();
    flatmin::data_parallel<esam_sgd, test_comm> dp(m.ps, esam_make(0.5, false)(), test_comm{});
    const auto w0 = m.w;
    const auto before = sm.losses(me);
    CHECK_THROWS_WITH_AS(dp.select(before, before), doctest::Contains("needs a perturbed ascend()"),
                         flatmin::usage_error);
    sm.subset_gradient(me, samples::all(me), m.g);
    dp.ascend();
    CHECK_THROWS_WITH_AS(dp.descend(), doctest::Contains("needs select() first"), flatmin::usage_error);
    const std::vector<double> short_losses(me == 0 ? 1 : before.size(), 0.0);
    if (me == 0)
      CHECK_THROWS_WITH_AS(dp.select(before, short_losses), doctest::Contains("losses at w but"),
                           std::invalid_argument);
    else
      CHECK_THROWS_AS(dp.select(before, short_losses), flatmin::peer_error);
    dp.select(before, sm.losses(me));
    CHECK_THROWS_WITH_AS(dp.select(before, before), doctest::Contains("twice"), flatmin::usage_error);
    dp.cancel();
    CHECK(m.w == w0);
  }
}

TEST_CASE("per-worker perturbation equals a float64 m-sharpness reference") {
  const int P = world_size(), me = world_rank();
  const double rho = 0.05, lr = 0.1;
  model dist;
  flatmin::data_parallel<sam_sgd, test_comm> dp(
      dist.ps, flatmin::sam_options{.rho = rho}.compose<flatmin::perturb::l2>(flatmin::base::sgd{.lr = lr}),
      test_comm{}, {.mode = flatmin::parallel_mode::per_worker_perturbation});
  std::vector<std::vector<double>> w(sizes.size());
  for (std::size_t t = 0; t < sizes.size(); ++t) w[t].assign(dist.w[t].begin(), dist.w[t].end());
  for (int s = 0; s < 3; ++s) {
    dist.fill(me);
    dp.ascend();
    dist.fill(me);
    dp.descend();
    // ε_r = ρ g_r / ‖g_r‖ over the perturbed tensors (not b2), g_adv_r = ∇L_r(w + ε_r), w −= lr·mean_r
    std::vector<std::vector<double>> mean(sizes.size());
    for (std::size_t t = 0; t < sizes.size(); ++t) mean[t].assign(sizes[t], 0.0);
    for (int r = 0; r < P; ++r) {
      double n2 = 0;
      for (std::size_t t = 0; t < 3; ++t)
        for (std::size_t i = 0; i < sizes[t]; ++i) {
          const double g = coef_a(r, t, i) * (w[t][i] - coef_c(r, t, i));
          n2 += g * g;
        }
      const double k = rho / (std::sqrt(n2) + 1e-12);
      for (std::size_t t = 0; t < sizes.size(); ++t)
        for (std::size_t i = 0; i < sizes[t]; ++i) {
          const double g = coef_a(r, t, i) * (w[t][i] - coef_c(r, t, i));
          const double wp = w[t][i] + (t < 3 ? k * g : 0.0);
          mean[t][i] += coef_a(r, t, i) * (wp - coef_c(r, t, i)) / P;
        }
    }
    for (std::size_t t = 0; t < sizes.size(); ++t)
      for (std::size_t i = 0; i < sizes[t]; ++i) w[t][i] -= lr * mean[t][i];
  }
  double worst = 0;
  for (std::size_t t = 0; t < sizes.size(); ++t)
    for (std::size_t i = 0; i < sizes[t]; ++i)
      worst = std::max(worst, std::abs(dist.w[t][i] - w[t][i]) / (1 + std::abs(w[t][i])));
  CHECK(worst < 2e-6);
}

TEST_CASE("per-worker ESAM: each rank's ε from its own g, the selection global, against float64") {
  const int P = world_size(), me = world_rank();
  const double rho = 0.05, beta = 0.5, lr = 0.1;
  model dist;
  samples sd{dist, false};
  using opt_t = flatmin::esam_t<float, flatmin::base::sgd>;
  flatmin::data_parallel<opt_t, test_comm> dp(
      dist.ps, flatmin::esam_options{.rho = rho, .beta = beta, .gamma = 0.3, .seed = 5}.compose(flatmin::base::sgd{.lr = lr}),
      test_comm{}, {.mode = flatmin::parallel_mode::per_worker_perturbation});
  std::vector<std::vector<double>> w(sizes.size());
  for (std::size_t t = 0; t < sizes.size(); ++t) w[t].assign(dist.w[t].begin(), dist.w[t].end());
  const auto offset_mean = [&](int r, const std::vector<std::size_t>& idx) {
    double m = 0;
    for (const std::size_t j : idx) m += sd.offset(r, j);
    return m / static_cast<double>(idx.size());
  };
  int perturbed_steps = 0;
  for (int s = 0; s < 4; ++s) {
    sample_objective obj{sd, me};
    const auto rep = dp.step(obj);
    const std::vector<std::size_t> got = dp.local().descent().selected();
    // The tensors this step perturbed (the draw is the same on every rank): 1/β-scaled ε on them.
    std::vector<bool> kept(sizes.size());
    for (std::size_t t = 0; t < sizes.size(); ++t) kept[t] = dp.local().mask_bytes(t)[0] != 0;
    perturbed_steps += kept[0] || kept[1] || kept[2];
    // float64: ε_r = (ρ/β) g_r,S / ‖g_r,S‖ over the kept perturbed tensors (not b2); every rank's
    // per-sample increases; the ⌈γ N⌉ largest of the concatenation; the count-weighted g_adv.
    std::vector<std::vector<std::vector<double>>> eps(static_cast<std::size_t>(P));
    std::vector<double> inc;
    std::vector<std::size_t> first(static_cast<std::size_t>(P) + 1, 0);
    for (int r = 0; r < P; ++r) {
      const double d = offset_mean(r, samples::all(r));
      double n2 = 0;
      for (std::size_t t = 0; t < 3; ++t)
        if (kept[t])
          for (std::size_t i = 0; i < sizes[t]; ++i) {
            const double g = coef_a(0, t, i) * (w[t][i] - coef_c(0, t, i) - d);
            n2 += g * g;
          }
      const double k = n2 > 0 ? rho / beta / (std::sqrt(n2) + 1e-12) : 0.0;
      auto& e = eps[static_cast<std::size_t>(r)];
      e.resize(sizes.size());
      for (std::size_t t = 0; t < sizes.size(); ++t) {
        e[t].assign(sizes[t], 0.0);
        if (t < 3 && kept[t])
          for (std::size_t i = 0; i < sizes[t]; ++i)
            e[t][i] = k * coef_a(0, t, i) * (w[t][i] - coef_c(0, t, i) - d);
      }
      for (std::size_t j = 0; j < samples::count(r); ++j) {
        double before = 0, after = 0;
        for (std::size_t t = 0; t < sizes.size(); ++t)
          for (std::size_t i = 0; i < sizes[t]; ++i) {
            const double x = w[t][i] - coef_c(0, t, i) - sd.offset(r, j);
            before += 0.5 * coef_a(0, t, i) * x * x;
            after += 0.5 * coef_a(0, t, i) * (x + e[t][i]) * (x + e[t][i]);
          }
        inc.push_back(after - before);
      }
      first[static_cast<std::size_t>(r) + 1] = inc.size();
    }
    const std::size_t K = static_cast<std::size_t>(std::ceil(0.3 * static_cast<double>(inc.size())));
    std::vector<std::size_t> order(inc.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return inc[a] > inc[b]; });
    std::vector<std::vector<std::size_t>> part(static_cast<std::size_t>(P));
    for (std::size_t n = 0; n < K; ++n)
      for (int r = 0; r < P; ++r)
        if (order[n] >= first[static_cast<std::size_t>(r)] && order[n] < first[static_cast<std::size_t>(r) + 1])
          part[static_cast<std::size_t>(r)].push_back(order[n] - first[static_cast<std::size_t>(r)]);
    for (auto& p : part) std::sort(p.begin(), p.end());
    if (!rep.perturbed) {  // no tensor drawn: the step descends with the ranks' mean batch gradient
      for (std::size_t t = 0; t < sizes.size(); ++t)
        for (std::size_t i = 0; i < sizes[t]; ++i) {
          double g = 0;
          for (int r = 0; r < P; ++r)
            g += coef_a(0, t, i) * (w[t][i] - coef_c(0, t, i) - offset_mean(r, samples::all(r))) / P;
          w[t][i] -= lr * g;
        }
      continue;
    }
    CHECK(got == part[static_cast<std::size_t>(me)]);
    for (std::size_t t = 0; t < sizes.size(); ++t)
      for (std::size_t i = 0; i < sizes[t]; ++i) {
        double g = 0;
        for (int r = 0; r < P; ++r) {
          const auto& idx = part[static_cast<std::size_t>(r)];
          if (idx.empty()) continue;
          const double wp = w[t][i] + eps[static_cast<std::size_t>(r)][t][i];
          g += static_cast<double>(idx.size()) * coef_a(0, t, i) * (wp - coef_c(0, t, i) - offset_mean(r, idx));
        }
        w[t][i] -= lr * g / static_cast<double>(K);
      }
    CHECK_FALSE(rep.skipped);
  }
  CHECK(perturbed_steps > 0);
  double worst = 0;
  for (std::size_t t = 0; t < sizes.size(); ++t)
    for (std::size_t i = 0; i < sizes[t]; ++i)
      worst = std::max(worst, std::abs(dist.w[t][i] - w[t][i]) / (1 + std::abs(w[t][i])));
  CHECK(worst < 2e-6);
}

TEST_CASE("faults: every rank takes the same decision, none hangs") {
  using M = test_comm;
  const int P = world_size(), me = world_rank(), last = P - 1;

  SUBCASE("a non-finite gradient on one rank skips the step on all (per-worker mode)") {
    model m;
    flatmin::data_parallel<sam_sgd, M> dp(m.ps, sam_make(sgd_momentum)(), M{},
                                          {.mode = flatmin::parallel_mode::per_worker_perturbation});
    m.fill(me);
    dp.ascend();
    m.fill(me);
    dp.descend();
    const auto before = m.w;
    m.fill(me);
    if (me == last) m.g[2][17] = std::numeric_limits<float>::quiet_NaN();
    const auto ra = dp.ascend();
    CHECK(ra.skipped);
    CHECK(ra.reason == flatmin::skip_reason::nonfinite_gradient);
    const auto rd = dp.descend();
    CHECK(rd.skipped);
    CHECK(m.w == before);
    CHECK(dp.steps() == 1);
    m.fill(me);
    dp.ascend();
    m.fill(me);
    CHECK_FALSE(dp.descend().skipped);
    CHECK(dp.steps() == 2);
  }

  SUBCASE("with nonfinite::raise every rank throws non_finite_error, weights untouched") {
    model m;
    auto c = sam_make(sgd_momentum)();
    c.options.on_nonfinite = flatmin::nonfinite::raise;
    flatmin::data_parallel<sam_sgd, M> dp(m.ps, c, M{},
                                          {.mode = flatmin::parallel_mode::per_worker_perturbation});
    const auto before = m.w;
    m.fill(me);
    if (me == last) m.g[0][3] = -std::numeric_limits<float>::infinity();
    CHECK_THROWS_AS(dp.ascend(), flatmin::non_finite_error);
    CHECK(m.w == before);
    CHECK(!dp.ascended());
  }

  SUBCASE("a non-finite g_adv on one rank skips the step on all (sharded)") {
    model m;
    flatmin::data_parallel<sam_sgd, M> dp(m.ps, sam_make(sgd_momentum)(), M{},
                                          {.mode = flatmin::parallel_mode::sharded});
    const auto before = m.w;
    m.fill(me);
    dp.ascend();
    m.fill(me);
    if (me == last) m.g[0][4500] = std::numeric_limits<float>::infinity();
    const auto rd = dp.descend();
    CHECK(rd.skipped);
    CHECK(m.w == before);
    CHECK(dp.steps() == 0);
  }

  SUBCASE("bad options are refused on every rank, naming the option") {
    model m;
    std::string what;
    try {
      flatmin::data_parallel<sam_sgd, M> dp(m.ps, sam_make(sgd_momentum)(), M{}, {.bucket_bytes = 8});
    } catch (const std::invalid_argument& e) {
      what = e.what();
    }
    CHECK(what.find("bucket_bytes") != std::string::npos);
  }

  SUBCASE("parameter tables that differ are refused at construction, naming rank and tensor") {
    if (P > 1) {
      model m(me == last ? 301 : 0);
      std::string what;
      try {
        flatmin::data_parallel<sam_sgd, M> dp(m.ps, sam_make(sgd_momentum)(), M{});
      } catch (const std::invalid_argument& e) {
        what = e.what();
      }
      CHECK(what.find("tensor 1 of rank " + std::to_string(last)) != std::string::npos);
      CHECK(what.find("'b1', 301 elements") != std::string::npos);
      CHECK(what.find("rank 0's ('b1', 300 elements") != std::string::npos);
    }
  }

  SUBCASE("an objective that throws on one rank cancels the step on all, weights restored") {
    for (const auto mode : {flatmin::parallel_mode::global_perturbation, flatmin::parallel_mode::sharded}) {
      for (const int at_call : {1, 2}) {  // at w, at w + ε
        model m;
        flatmin::data_parallel<sam_sgd, M> dp(m.ps, sam_make(sgd_momentum)(), M{}, {.mode = mode});
        dp.step([&] { return m.fill(me); });
        const auto before = m.w;
        int calls = 0;
        bool own = false, peer = false;
        try {
          dp.step([&] {
            if (++calls == at_call && me == last) throw std::runtime_error("boom");
            return m.fill(me);
          });
        } catch (const flatmin::peer_error& e) {
          peer = e.rank() == last && std::string(e.what()).find("boom") != std::string::npos;
        } catch (const std::runtime_error& e) {
          own = std::string(e.what()) == "boom";
        }
        CHECK((me == last ? own : peer));
        CHECK(m.w == before);
        CHECK(!dp.ascended());
        dp.step([&] { return m.fill(me); });
        CHECK(dp.steps() == 2);
      }
    }
  }
  SUBCASE("ESAM: a sample objective that throws on one rank (losses at w + ε, or the subset gradient)") {
    struct throwing : sample_objective {
      int at = 0, me = 0, last = 0;
      void losses(std::span<double> out) {
        if (at == 1 && me == last) throw std::runtime_error("boom");
        sample_objective::losses(out);
      }
      void subset_gradient(std::span<const std::size_t> idx) {
        if (at == 2 && me == last) throw std::runtime_error("boom");
        sample_objective::subset_gradient(idx);
      }
    };
    for (const auto mode : {flatmin::parallel_mode::global_perturbation, flatmin::parallel_mode::sharded}) {
      for (const int at : {1, 2}) {
        model m;
        samples sm{m, false};
        flatmin::data_parallel<esam_sgd, M> dp(m.ps, esam_make(1.0, false)(), M{}, {.mode = mode});
        auto before = m.w;
        throwing obj{{sm, me}, at, me, last};
        bool own = false, peer = false;
        try {  // γ = 1: the last rank has selected samples on every perturbed step
          for (int s = 0; s < 4; ++s) {
            before = m.w;
            dp.step(obj);
          }
        } catch (const flatmin::peer_error& e) {
          peer = e.rank() == last && std::string(e.what()).find("boom") != std::string::npos;
        } catch (const std::runtime_error& e) {
          own = std::string(e.what()) == "boom";
        }
        CHECK((me == last ? own : peer));
        CHECK(!dp.ascended());
        CHECK(dp.steps() < 4);
        CHECK(m.w == before);
      }
    }
  }
}

// Two steps, a checkpoint, two more; a fresh run loads it and takes the same two steps.
template <class Opt, bool by_sample = false, class Make>
void check_sharded_resume(const Make& make) {
  using M = test_comm;
  const int me = world_rank();
  const flatmin::data_parallel_options o{.mode = flatmin::parallel_mode::sharded};
  model a;
  flatmin::data_parallel<Opt, M> dp(a.ps, make(), M{}, o);
  const auto run = [&](auto& opt, model& m, int n) {
    for (int s = 0; s < n; ++s) {
      if constexpr (by_sample) {  // ESAM: per-sample losses, the selection global
        samples sm{m, false};
        sample_objective obj{sm, me};
        opt.step(obj);
      } else {
        opt.step([&] { return m.fill(me); });
      }
    }
  };
  run(dp, a, 2);
  std::stringstream file;
  dp.save(file);
  const auto saved_w = a.w;
  run(dp, a, 2);

  model b;
  for (std::size_t t = 0; t < b.w.size(); ++t)
    std::copy(saved_w[t].begin(), saved_w[t].end(), b.w[t].begin());
  flatmin::data_parallel<Opt, M> resumed(b.ps, make(), M{}, o);
  resumed.load(file);
  CHECK(resumed.steps() == 2);
  run(resumed, b, 2);
  CHECK(same_weights(a, b));
}

TEST_CASE("sharded checkpoints: each rank its shard, resumed bit-exactly") {
  using M = test_comm;
  const flatmin::data_parallel_options o{.mode = flatmin::parallel_mode::sharded};
  check_sharded_resume<sam_adamw>(sam_make(adamw));
  // The masks that select across the shards, refreshed after the resume (step 3): the Fisher sums
  // and SSAM-D's bits are each rank's part, and SSAM-D's active count is summed again.
  check_sharded_resume<flatmin::fsam_t<float, flatmin::base::adam>>([] {
    return flatmin::fsam_options{.keep = 0.25, .refresh_every = 2}.compose(flatmin::base::adam{.lr = 1e-2});
  });
  check_sharded_resume<flatmin::ssam_d_t<float, flatmin::base::sgd>>([] {
    auto c = flatmin::ssam_d_options{}.compose(sgd_momentum);
    c.mask.sparsity = 0.3;
    c.mask.death_rate = 0.7;
    c.mask.refresh_every = 2;
    return c;
  });
  // ESAM: the random draws are the step count's (no state of their own); the selection global.
  check_sharded_resume<esam_sgd, true>(esam_make(0.5, false));
  model b;
  flatmin::data_parallel<sam_adamw, M> resumed(b.ps, sam_make(adamw)(), M{}, o);
  std::stringstream file;
  {
    model a;
    flatmin::data_parallel<sam_adamw, M> dp(a.ps, sam_make(adamw)(), M{}, o);
    for (int s = 0; s < 2; ++s) dp.step([&] { return a.fill(world_rank()); });
    dp.save(file);
  }
  resumed.load(file);
  for (int s = 0; s < 2; ++s) resumed.step([&] { return b.fill(world_rank()); });

  // A checkpoint of another mode is refused on every rank, and nothing is loaded.
  model c;
  flatmin::data_parallel<sam_adamw, M> other(c.ps, sam_make(adamw)(), M{}, {});
  std::stringstream f2;
  other.save(f2);
  CHECK_THROWS_AS(resumed.load(f2), std::invalid_argument);
  CHECK(resumed.steps() == 4);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  doctest::Context ctx(argc, argv);
  if (world_rank() != 0) ctx.setOption("out", "/dev/null");  // one rank's report; failures still count
  int rc = ctx.run();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return worst;
}
