// The O(N) radix top-k (mask/detail/top_k.hpp) against a full sort: exact k, ties to the lower
// index, excluded candidates, k = 0, k = 1, k ≥ count, all-equal scores, float and double keys.
// The sampled-bracket top-k of scores (mask/detail/score_top_k.hpp) and its mask words against the
// same sort: on smooth scores (the bracket path), on ties inside the band, on heavy ties (the
// band overflows) and on a sample planted to miss (both fall back to radix selection).
#include <doctest/doctest.h>
#include <flatmin/mask/detail/score_top_k.hpp>
#include <flatmin/mask/detail/top_k.hpp>

#include <algorithm>
#include <barrier>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "support/backends.hpp"

namespace {
template <class S>
struct key_fn {
  const S* score;
  std::size_t skip;  ///< every skip-th unit is not a candidate (0: none)
  FLATMIN_HD bool operator()(std::size_t u, std::uint64_t& k) const {
    if (skip && u % skip == 0) return false;
    k = flatmin::mask::detail::float_key(score[u]);
    return true;
  }
};

template <class S>
std::vector<std::size_t> reference(const std::vector<S>& s, std::size_t k, std::size_t skip) {
  std::vector<std::size_t> idx;
  for (std::size_t u = 0; u < s.size(); ++u)
    if (!(skip && u % skip == 0)) idx.push_back(u);
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
    return double(s[a]) > double(s[b]) || (double(s[a]) == double(s[b]) && a < b);
  });
  idx.resize(std::min(k, idx.size()));
  std::sort(idx.begin(), idx.end());
  return idx;
}

template <class B, class S>
std::vector<std::size_t> run(const std::vector<S>& host, std::size_t k, std::size_t skip) {
  const auto dev = B::from_host(host);
  const key_fn<S> key{B::data(dev), skip};
  const auto sel = flatmin::mask::detail::top_k<B>(host.size(), k, key, 8 * sizeof(S));
  std::vector<std::size_t> out;
  for (std::size_t u = 0; u < host.size(); ++u)  // the predicate reads only `score`: host copy for the check
    if (flatmin::mask::detail::selection<key_fn<S>>{key_fn<S>{host.data(), skip}, sel.threshold, sel.last_tie, sel.none,
                                                    sel.all}(u))
      out.push_back(u);
  return out;
}
}  // namespace

TEST_CASE_TEMPLATE("top_k: random, tied and equal scores, every boundary", B, FLATMIN_TEST_BACKENDS) {
  std::mt19937 rng(11);
  const std::size_t n = 70001;
  std::vector<float> smooth(n), coarse(n), equal(n, 2.5f);
  std::vector<double> dsmooth(n);
  std::exponential_distribution<float> ex(1.f);
  for (std::size_t i = 0; i < n; ++i) {
    smooth[i] = ex(rng);
    dsmooth[i] = double(ex(rng)) * 1e-3;
    coarse[i] = static_cast<float>(rng() % 13) * 0.25f;  // 13 values: heavy ties
  }
  coarse[5] = 0.f;
  coarse[6] = -0.f;  // −0 equals +0
  for (std::size_t skip : {std::size_t{0}, std::size_t{7}}) {
    for (std::size_t k : {std::size_t{0}, std::size_t{1}, std::size_t{2}, n / 13, n / 3, n / 2 + 17, n - 1, n, n + 5}) {
      CAPTURE(skip);
      CAPTURE(k);
      CHECK(run<B>(smooth, k, skip) == reference(smooth, k, skip));
      CHECK(run<B>(coarse, k, skip) == reference(coarse, k, skip));
      CHECK(run<B>(equal, k, skip) == reference(equal, k, skip));
      CHECK(run<B>(dsmooth, k, skip) == reference(dsmooth, k, skip));
    }
  }
  SUBCASE("tiny inputs") {
    const std::vector<float> one{3.f};
    CHECK(run<B>(one, 0, 0).empty());
    CHECK(run<B>(one, 1, 0) == std::vector<std::size_t>{0});
    const std::vector<float> none;
    CHECK(run<B>(none, 3, 0).empty());
  }
}

namespace {
// Scores with −1 for non-candidates; the reference is a full sort of the candidates (score
// descending, index ascending), of which the first k are the selection.
template <class S>
std::vector<std::size_t> ranking(const std::vector<S>& s) {
  std::vector<std::size_t> idx;
  for (std::size_t u = 0; u < s.size(); ++u)
    if (s[u] >= S(0)) idx.push_back(u);
  std::sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) {
    return double(s[a]) > double(s[b]) || (double(s[a]) == double(s[b]) && a < b);
  });
  return idx;
}
std::vector<std::size_t> first_k(std::vector<std::size_t> ranked, std::size_t k) {
  ranked.resize(std::min(k, ranked.size()));
  std::sort(ranked.begin(), ranked.end());
  return ranked;
}

// score_top_k, then the mask words written by score_bits on the backend; the set bits.
// `ws`: buffers reused from earlier selections (their stale contents must not matter), else fresh.
template <class B, class S>
std::vector<std::size_t> run_scores(const std::vector<S>& host, std::size_t k, bool& bracketed,
                                    flatmin::mask::detail::top_k_workspace<S, B>* ws = nullptr) {
  namespace d = flatmin::mask::detail;
  const auto dev = B::from_host(host);
  const std::size_t n = host.size();
  const auto sel = d::score_top_k<B>(static_cast<const S*>(B::data(dev)), n, k, {}, ws);
  bracketed = sel.bracketed;
  auto bits = B::template make_vector<std::uint32_t>((n + 31) / 32, 0xdeadbeefu);
  B::for_each_index((n + 31) / 32, d::score_bits<S>{sel, B::data(bits), n});
  const auto h = B::to_host(bits);
  std::vector<std::size_t> out;
  for (std::size_t u = 0; u < n; ++u)
    if (d::test_bit(h.data(), u)) out.push_back(u);
  return out;
}
}  // namespace

TEST_CASE_TEMPLATE("score_top_k: the sampled bracket and its fallbacks select exactly the top k", B, FLATMIN_TEST_BACKENDS) {
  namespace d = flatmin::mask::detail;
  const std::size_t n = d::bracket_min_units + 12347;  // not a multiple of 32: a partial last word
  std::mt19937 rng(5);
  std::exponential_distribution<float> ex(1.f);
  std::vector<float> smooth(n), banded(n), coarse(n), planted(n);
  std::vector<double> dsmooth(n);
  for (std::size_t i = 0; i < n; ++i) {
    smooth[i] = ex(rng);
    dsmooth[i] = double(ex(rng)) * 1e-3;
    banded[i] = std::floor(ex(rng) * 4096.f) / 4096.f;  // a few hundred ties per value near the threshold
    coarse[i] = static_cast<float>(rng() % 13) * 0.25f;  // 13 values: the band holds ~1/13 of all
  }
  for (std::size_t i = 0; i < n; i += 7) smooth[i] = banded[i] = coarse[i] = -1.f, dsmooth[i] = -1.0;
  smooth[100] = 0.f;
  smooth[101] = -0.f;  // −0 is a candidate equal to +0
  // planted: every sampled unit (stride n / S, offset stride / 2) scores above everything else,
  // so every bracket drawn from the sample misses the k-th score
  const std::size_t stride = n / d::bracket_sample;
  for (std::size_t i = 0; i < n; ++i) planted[i] = static_cast<float>(i % 1000) * 1e-3f;
  for (std::size_t j = 0; j < d::bracket_sample; ++j) planted[j * stride + stride / 2] = 10.f + static_cast<float>(j % 5);

  const auto r_smooth = ranking(smooth), r_dsmooth = ranking(dsmooth), r_banded = ranking(banded),
             r_coarse = ranking(coarse), r_planted = ranking(planted);
  const std::size_t cand = n - (n + 6) / 7;
  // one set of buffers for every selection below, as mask::fisher keeps one across its refreshes:
  // the band grows and shrinks with k and the data, and each selection finds the last one's values
  d::top_k_workspace<float, B> ws;
  d::top_k_workspace<double, B> wsd;
  for (std::size_t k : {std::size_t{0}, std::size_t{1}, std::size_t{37}, n / 10, n / 2 + 3, cand - 1, cand, cand + 9}) {
    CAPTURE(k);
    bool br = false;
    CHECK(run_scores<B>(smooth, k, br) == first_k(r_smooth, k));  // fresh buffers
    if (k >= n / 10 && k < cand - 1) CHECK(br);  // the fast path ran (a miss is ~1e-4 likely; this sample does not)
    CHECK(run_scores<B>(smooth, k, br, &ws) == first_k(r_smooth, k));
    if (k >= n / 10 && k < cand - 1) CHECK(br);
    CHECK(run_scores<B>(dsmooth, k, br, &wsd) == first_k(r_dsmooth, k));
    CHECK(run_scores<B>(banded, k, br, &ws) == first_k(r_banded, k));
    if (k >= n / 10 && k < cand - 1) CHECK(br);  // ties inside the band are split by index there
    CHECK(run_scores<B>(coarse, k, br, &ws) == first_k(r_coarse, k));
    if (k >= n / 10 && k < cand - 1) CHECK_FALSE(br);  // the band overflowed: radix selection
    CHECK(run_scores<B>(planted, k, br, &ws) == first_k(r_planted, k));
    if (k >= n / 10 && k < n - d::bracket_sample) CHECK_FALSE(br);
  }
  CHECK(ws.band.size() > 0);  // the bracket ran with these buffers
  CHECK(wsd.band.size() > 0);
}

// A selection across processes (a `span`: mask::fisher / mask::dynamic in data_parallel's sharded
// mode), with the processes played by threads whose gather meets at a barrier: every part's mask
// words must be its part of the one-process selection over the concatenated scores, for the
// score selection (the k-th score tied across the parts' boundaries, candidates and not) and for
// the radix selection of keys.
namespace {
/// P threads' all-gather of counts: each writes its slot, all wait, all read.
struct thread_gather {
  std::size_t parts;
  std::vector<std::vector<std::uint64_t>>* slots;
  std::barrier<>* meet;
  std::size_t me;
  std::vector<std::uint64_t> operator()(const std::uint64_t* mine, std::size_t n) const {
    (*slots)[me].assign(mine, mine + n);
    meet->arrive_and_wait();
    std::vector<std::uint64_t> all;
    for (std::size_t q = 0; q < parts; ++q) all.insert(all.end(), (*slots)[q].begin(), (*slots)[q].end());
    meet->arrive_and_wait();  // nobody overwrites a slot before everyone has read it
    return all;
  }
};

/// The one-process answer: the k largest candidates (score ≥ 0), ties to the lower index.
std::vector<std::size_t> reference_scores(const std::vector<float>& s, std::size_t k) {
  std::vector<std::size_t> idx;
  for (std::size_t u = 0; u < s.size(); ++u)
    if (s[u] >= 0) idx.push_back(u);
  std::stable_sort(idx.begin(), idx.end(), [&](std::size_t a, std::size_t b) { return s[a] > s[b]; });
  return first_k(idx, k);
}

/// Every part runs `select(part, span) -> selected global indices` in its own thread.
template <class Select>
std::vector<std::size_t> across_parts(const std::vector<std::size_t>& cuts, std::size_t eligible,
                                      const Select& select) {
  namespace d = flatmin::mask::detail;
  const std::size_t P = cuts.size() - 1;
  std::vector<std::vector<std::uint64_t>> slots(P);
  std::barrier<> meet(static_cast<std::ptrdiff_t>(P));
  std::vector<std::vector<std::size_t>> chosen(P);
  std::vector<std::thread> threads;
  for (std::size_t p = 0; p < P; ++p)
    threads.emplace_back([&, p] {
      const std::size_t n = cuts[p + 1] - cuts[p];
      const d::span sp = d::make_span(n, eligible / P + (p == 0 ? eligible % P : 0), p,
                                      thread_gather{P, &slots, &meet, p});
      chosen[p] = select(p, sp);
    });
  for (auto& t : threads) t.join();
  std::vector<std::size_t> out;
  for (const auto& c : chosen) out.insert(out.end(), c.begin(), c.end());
  return out;
}
}  // namespace

TEST_CASE_TEMPLATE("score_top_k and top_k across processes: each part is its part of the one-process selection",
                   B, FLATMIN_TEST_BACKENDS) {
  namespace d = flatmin::mask::detail;
  std::mt19937 rng(5);
  const std::size_t n = 5003;
  std::vector<float> s(n);
  for (auto& x : s) {  // four values, thousands of ties each, and non-candidates (−1)
    const unsigned r = rng() % 9;
    x = r == 0 ? -1.f : 0.25f * static_cast<float>(r % 4);
  }
  std::size_t candidates = 0;
  for (float x : s) candidates += x >= 0;
  for (const auto& cuts : {std::vector<std::size_t>{0, n}, std::vector<std::size_t>{0, 700, 1900, n},
                           std::vector<std::size_t>{0, 1, 2, 2500, n}}) {
    for (const std::size_t k : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, std::size_t{2345},
                                candidates - 1, candidates, n}) {
      CAPTURE(cuts.size() - 1);
      CAPTURE(k);
      const auto scores = across_parts(cuts, candidates, [&](std::size_t p, const d::span& sp) {
        const std::vector<float> part(s.begin() + static_cast<std::ptrdiff_t>(cuts[p]),
                                      s.begin() + static_cast<std::ptrdiff_t>(cuts[p + 1]));
        const auto dev = B::from_host(part);
        const std::size_t m = part.size();
        const auto sel = d::score_top_k<B>(static_cast<const float*>(B::data(dev)), m, k, sp);
        auto bits = B::template make_vector<std::uint32_t>((m + 31) / 32, 0u);
        B::for_each_index((m + 31) / 32, d::score_bits<float>{sel, B::data(bits), m});
        const auto h = B::to_host(bits);
        std::vector<std::size_t> out;
        for (std::size_t u = 0; u < m; ++u)
          if (d::test_bit(h.data(), u)) out.push_back(cuts[p] + u);
        return out;
      });
      CHECK(scores == reference_scores(s, k));
      // The key form (mask::dynamic's drop and growth): the selection's own predicate.
      const auto keys = across_parts(cuts, candidates, [&](std::size_t p, const d::span& sp) {
        const std::vector<float> part(s.begin() + static_cast<std::ptrdiff_t>(cuts[p]),
                                      s.begin() + static_cast<std::ptrdiff_t>(cuts[p + 1]));
        const auto dev = B::from_host(part);
        const d::score_key<float> key{static_cast<const float*>(B::data(dev))};
        const auto sel = d::top_k<B>(part.size(), k, key, d::float_key_bits<float>, sp);
        auto host_sel = sel;
        host_sel.key = d::score_key<float>{part.data()};
        std::vector<std::size_t> out;
        for (std::size_t u = 0; u < part.size(); ++u)
          if (host_sel(u)) out.push_back(cuts[p] + u);
        return out;
      });
      CHECK(keys == reference_scores(s, k));
    }
  }
}
