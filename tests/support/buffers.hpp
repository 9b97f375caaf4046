#pragma once
// Parameter memory in the space a backend runs on: std::vector for backend::eigen,
// thrust::device_vector for backend::thrust (device memory under CUDA; host memory on OMP/CPP,
// which also exercises params/thrust_views.hpp). Tests move data through host std::vectors.
#include <flatmin/backend/eigen.hpp>
#include <flatmin/params/param_set.hpp>

#include <string>
#include <vector>

#if defined(FLATMIN_TEST_WITH_THRUST)
#include <flatmin/backend/thrust.hpp>
#include <flatmin/params/thrust_views.hpp>
#include <thrust/copy.h>
#endif

namespace flatmin_test {

template <class Backend, class T>
struct buffer_of {
  using type = std::vector<T>;
  static type make(const std::vector<T>& h) { return h; }
  static std::vector<T> host(const type& b) { return b; }
  static void assign(type& b, const std::vector<T>& h) { b = h; }
};

#if defined(FLATMIN_TEST_WITH_THRUST)
template <class T>
struct buffer_of<flatmin::backend::thrust, T> {
  using type = thrust::device_vector<T>;
  static type make(const std::vector<T>& h) { return type(h.begin(), h.end()); }
  static std::vector<T> host(const type& b) {
    std::vector<T> h(b.size());
    thrust::copy(b.begin(), b.end(), h.begin());
    return h;
  }
  static void assign(type& b, const std::vector<T>& h) { thrust::copy(h.begin(), h.end(), b.begin()); }
};
#endif

template <class Backend, class T>
using buffer = typename buffer_of<Backend, T>::type;

}  // namespace flatmin_test
