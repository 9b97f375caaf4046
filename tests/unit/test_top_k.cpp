// The O(N) radix top-k (mask/detail/top_k.hpp) against a full sort: exact k, ties to the lower
// index, excluded candidates, k = 0, k = 1, k ≥ count, all-equal scores, float and double keys.
#include <doctest/doctest.h>
#include <flatmin/mask/detail/top_k.hpp>

#include <algorithm>
#include <random>
#include <set>
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
