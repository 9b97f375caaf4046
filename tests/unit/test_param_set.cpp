// param_set validation (null pointers, zero size, duplicate names, shape/size mismatch, value ==
// grad, overlapping tensors, empty set) and the buffer types it accepts (Eigen::Matrix / Map /
// Ref, std::span, std::vector) or rejects (strided Eigen views).
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <array>
#include <cstdint>
#include <span>

#include "support/problems.hpp"

using flatmin::param_set;
using flatmin::tensor_options;

TEST_CASE("param_set: bad views are rejected with invalid_argument naming the tensor") {
  std::vector<float> a(6), ga(6), b(4), gb(4);
  param_set<float> ps;
  CHECK_THROWS_AS(ps.add("x", nullptr, ga.data(), {6}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), nullptr, {6}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), ga.data(), {0}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), ga.data(), {3, 0}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), ga.data(), {}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("", a.data(), ga.data(), {6}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("x", a.data(), a.data(), {6}), std::invalid_argument);  // value == grad
  CHECK(ps.empty());
  try {
    ps.add("layer.weight", nullptr, ga.data(), {6});
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("layer.weight") != std::string::npos);
  }

  ps.add("x", a.data(), ga.data(), {2, 3});
  CHECK_THROWS_AS(ps.add("x", b.data(), gb.data(), {4}), std::invalid_argument);  // duplicate name
  CHECK(ps.size() == 1);

  // buffers: sizes must agree
  CHECK_THROWS_AS(ps.add("y", b, ga), std::invalid_argument);
  CHECK(ps.size() == 1);  // a rejected view leaves the set as it was, its name free
  // an explicit shape must match the buffers
  CHECK_THROWS_AS(ps.add("y", b, gb, std::vector<std::size_t>{3}), std::invalid_argument);
  CHECK_THROWS_AS(ps.add("y", b, gb, std::vector<std::size_t>{2, 3}), std::invalid_argument);
  CHECK(ps.size() == 1);
  ps.add("y", b, gb, {.weight_decay = false});  // designated options, no ambiguity
  CHECK(ps[1].shape == std::vector<std::size_t>{4});
  CHECK_FALSE(ps[1].options.weight_decay);
  CHECK(ps.size() == 2);
  CHECK(ps.numel() == 10);
  CHECK_NOTHROW(ps.validate());
}

TEST_CASE("param_set: empty and overlapping sets are rejected by validate() and by the optimizer") {
  param_set<float> empty;
  CHECK_THROWS_AS(empty.validate(), std::invalid_argument);
  CHECK_THROWS_AS(flatmin::sam(empty, flatmin::base::sgd{}), std::invalid_argument);
  CHECK_THROWS_AS(flatmin::sgd(empty), std::invalid_argument);

  std::vector<float> buf(20), gbuf(20);
  {  // two values overlapping
    param_set<float> ps;
    ps.add("a", buf.data(), gbuf.data(), {10});
    ps.add("b", buf.data() + 5, gbuf.data() + 10, {10});
    CHECK_THROWS_AS(ps.validate(), std::invalid_argument);
    CHECK_THROWS_AS(flatmin::asam(ps, flatmin::base::adamw{}), std::invalid_argument);
  }
  {  // a value overlapping another tensor's gradient
    param_set<float> ps;
    ps.add("a", buf.data(), buf.data() + 10, {10});
    ps.add("b", buf.data() + 15, gbuf.data(), {5});
    CHECK_THROWS_AS(ps.validate(), std::invalid_argument);
  }
  {  // a value overlapping its own gradient
    param_set<float> ps;
    ps.add("a", buf.data(), buf.data() + 5, {10});
    CHECK_THROWS_AS(ps.validate(), std::invalid_argument);
  }
  {  // adjacent is fine
    param_set<float> ps;
    ps.add("a", buf.data(), gbuf.data(), {10});
    ps.add("b", buf.data() + 10, gbuf.data() + 10, {10});
    CHECK_NOTHROW(ps.validate());
    CHECK_NOTHROW(flatmin::sam(ps, flatmin::base::sgd{}));
  }
}

TEST_CASE("param_set: Eigen matrices, Map, Ref, std::span and std::vector are accepted with their shapes") {
  Eigen::MatrixXf W = Eigen::MatrixXf::Random(3, 4), dW = Eigen::MatrixXf::Zero(3, 4);
  Eigen::VectorXf v = Eigen::VectorXf::Random(5), dv = Eigen::VectorXf::Zero(5);
  std::vector<float> m_buf(6, 1.f), dm_buf(6);
  Eigen::Map<Eigen::MatrixXf> M(m_buf.data(), 2, 3), dM(dm_buf.data(), 2, 3);
  Eigen::Matrix<float, 2, 2, Eigen::RowMajor> R, dR;
  Eigen::Ref<Eigen::Matrix<float, 2, 2, Eigen::RowMajor>> Rr(R), dRr(dR);
  std::vector<float> s_buf(7), ds_buf(7), vec(8), dvec(8);
  std::span<float> S(s_buf), dS(ds_buf);

  param_set<float> ps;
  CHECK(ps.add("W", W, dW).shape == std::vector<std::size_t>{3, 4});
  CHECK(ps.add("v", v, dv).shape == std::vector<std::size_t>{5, 1});
  CHECK(ps.add("M", M, dM).shape == std::vector<std::size_t>{2, 3});
  CHECK(ps.add("R", Rr, dRr, tensor_options{.weight_decay = false}).shape == std::vector<std::size_t>{2, 2});
  CHECK(ps.add("S", S, dS).shape == std::vector<std::size_t>{7});
  CHECK(ps.add("vec", vec, dvec, std::vector<std::size_t>{2, 4}).shape == std::vector<std::size_t>{2, 4});
  CHECK(ps.size() == 6);
  CHECK(ps.numel() == 12 + 5 + 6 + 4 + 7 + 8);
  CHECK(ps[0].value == W.data());
  CHECK(ps[0].grad == dW.data());
  CHECK(ps[2].value == m_buf.data());
  CHECK_FALSE(ps[3].options.weight_decay);
  CHECK(ps[3].flags() == (flatmin::tensor_flags::perturb | flatmin::tensor_flags::adaptive |
                          flatmin::tensor_flags::mask_eligible));

  // and an optimizer trains them in place
  auto opt = flatmin::sgd(ps, {.lr = 0.5});
  dW.setConstant(1.f);
  const Eigen::MatrixXf W0 = W;
  opt.descend();
  CHECK((W.array() == W0.array() - 0.5f).all());
}

TEST_CASE("param_set: strided Eigen views are rejected") {
  std::vector<float> buf(24), gbuf(24);
  using strided = Eigen::Map<Eigen::VectorXf, 0, Eigen::InnerStride<2>>;
  strided v(buf.data(), 6), gv(gbuf.data(), 6);
  param_set<float> ps;
  CHECK_THROWS_AS(ps.add("strided", v, gv), std::invalid_argument);
  Eigen::Map<Eigen::VectorXf> dense_g(gbuf.data(), 6);
  CHECK_THROWS_AS(ps.add("strided", v, dense_g), std::invalid_argument);

  // a block of a larger matrix: outer stride 5 ≠ 3 rows
  using outer = Eigen::Map<Eigen::MatrixXf, 0, Eigen::OuterStride<>>;
  outer blk(buf.data(), 3, 2, Eigen::OuterStride<>(5)), gblk(gbuf.data(), 3, 2, Eigen::OuterStride<>(5));
  CHECK_THROWS_AS(ps.add("block", blk, gblk), std::invalid_argument);
  Eigen::MatrixXf big = Eigen::MatrixXf::Zero(5, 5), gbig = Eigen::MatrixXf::Zero(5, 5);
  Eigen::Ref<Eigen::MatrixXf, 0, Eigen::OuterStride<>> rb(big.block(0, 0, 2, 3)), grb(gbig.block(0, 0, 2, 3));
  CHECK_THROWS_AS(ps.add("ref_block", rb, grb), std::invalid_argument);
  CHECK(ps.empty());

  // an outer-strided map whose stride equals its rows is contiguous and fine
  outer ok(buf.data(), 3, 2, Eigen::OuterStride<>(3)), gok(gbuf.data(), 3, 2, Eigen::OuterStride<>(3));
  CHECK_NOTHROW(ps.add("ok", ok, gok));
}

TEST_CASE("param_set: a view in memory the backend cannot reach is a usage_error") {
  std::vector<float> a(4), ga(4);
  param_set<float> ps;
  ps.add("dev", a.data(), ga.data(), {4}, {}, flatmin::memory_space::device);
  CHECK_THROWS_AS(flatmin::sam<flatmin::backend::eigen>(ps, flatmin::base::sgd{}), flatmin::usage_error);
}

TEST_CASE("param_set: LoRA pairs are two tagged tensors") {
  std::vector<float> A(8 * 16), gA(8 * 16), B(16 * 8), gB(16 * 8);
  param_set<float> ps;
  const auto& p = ps.add_lora_pair("attn.q", A.data(), gA.data(), {8, 16}, B.data(), gB.data(), {16, 8});
  CHECK(p.name == "attn.q");
  CHECK(ps.size() == 2);
  CHECK(ps[p.a].name == "attn.q.A");
  CHECK(ps[p.b].name == "attn.q.B");
  CHECK((ps[p.a].flags() & flatmin::tensor_flags::lora_a) != 0);
  CHECK((ps[p.b].flags() & flatmin::tensor_flags::lora_b) != 0);
  CHECK_THROWS_AS(ps.add_lora_pair("attn.q", A.data(), gA.data(), {8, 16}, B.data(), gB.data(), {16, 8}),
                  std::invalid_argument);
  // a bad second factor leaves no half-registered pair behind
  std::vector<float> C(4), gC(4), D(4), gD(4);
  CHECK_THROWS_AS(ps.add_lora_pair("attn.k", C.data(), gC.data(), {2, 2}, nullptr, gB.data(), {16, 8}),
                  std::invalid_argument);
  CHECK(ps.size() == 2);
  CHECK(ps.lora_pairs().size() == 1);
  CHECK_NOTHROW(ps.add_lora_pair("attn.k", C.data(), gC.data(), {2, 2}, D.data(), gD.data(), {2, 2}));
  CHECK_NOTHROW(ps.validate());
}

// ---- shapes: a braced list of integers is always a shape, in any integer type ----------------------

namespace {
// What add() threw, or "" when it did not throw.
template <class F>
std::string add_error(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}
// A run-time size_t extent: a braced list mixing it with int literals takes the size_t list form.
std::size_t rows_of(std::size_t n) { return n; }
}  // namespace

TEST_CASE("param_set: a braced list after buffers is the shape, never tensor_options") {
  std::vector<float> w(128), g(128);
  Eigen::MatrixXf W = Eigen::MatrixXf::Zero(3, 4), dW = Eigen::MatrixXf::Zero(3, 4);
  param_set<float> ps;
  // {16, 8} used to bind to tensor_options (a narrowing error); now it is the shape.
  const auto& a = ps.add("w", w, g, {16, 8});
  CHECK(a.shape == std::vector<std::size_t>{16, 8});
  CHECK(a.flags() == flatmin::to_flags(tensor_options{}));
  // an Eigen 3×4 matrix registered as 6×2 (the buffer's size is what must match)
  CHECK(ps.add("W", W, dW, {6, 2}, {.perturb = false}).shape == std::vector<std::size_t>{6, 2});
  CHECK_FALSE(ps[1].options.perturb);
  CHECK(ps[1].options.weight_decay);
  // {} keeps the buffer's own shape (as `{}` meant default options before)
  std::vector<float> b(5), gb(5);
  CHECK(ps.add("b", b, gb, {}).shape == std::vector<std::size_t>{5});
  // a size_t extent mixed with literals
  std::vector<float> c(12), gc(12);
  const std::size_t rows = 3;
  CHECK(ps.add("c", c, gc, {rows, 4}).shape == std::vector<std::size_t>{3, 4});

  // {1, 0} used to compile as {.weight_decay = true, .perturb = false} with no shape; now it is a
  // shape with no elements, rejected, naming the tensor; the set is unchanged.
  std::vector<float> d(2), gd(2);
  const std::string e = add_error([&] { ps.add("d", d, gd, {1, 0}); });
  CHECK(e.find("'d'") != std::string::npos);
  CHECK(e.find("does not match its buffer size 2") != std::string::npos);
  CHECK(ps.size() == 4);
}

TEST_CASE("param_set: shapes of any integer type; negative extents rejected naming the tensor") {
  std::vector<float> w(8), g(8);
  {  // libtorch's p.sizes().vec() is a std::vector<int64_t>
    param_set<float> ps;
    CHECK(ps.add("w", w, g, std::vector<std::int64_t>{4, 2}).shape == std::vector<std::size_t>{4, 2});
  }
  {
    param_set<float> ps;
    CHECK(ps.add("w", w, g, std::array<int, 3>{2, 2, 2}).shape == std::vector<std::size_t>{2, 2, 2});
  }
  {
    param_set<float> ps;
    const std::array<long, 2> dims{1, 8};
    CHECK(ps.add("w", w, g, std::span<const long>(dims)).shape == std::vector<std::size_t>{1, 8});
  }
  {  // a braced list of int64_t variables, and of unsigned literals
    param_set<float> ps;
    const std::int64_t r = 2, c = 4;
    CHECK(ps.add("w", w, g, {r, c}).shape == std::vector<std::size_t>{2, 4});
    std::vector<float> v(8), gv(8);
    CHECK(ps.add("v", v, gv, {8u}).shape == std::vector<std::size_t>{8});
  }
  {  // raw pointers take the same forms
    param_set<float> ps;
    CHECK(ps.add("w", w.data(), g.data(), std::vector<std::int64_t>{2, 4}).shape ==
          std::vector<std::size_t>{2, 4});
    const int n = 8;
    std::vector<float> v(8), gv(8);
    CHECK(ps.add("v", v.data(), gv.data(), {n}).shape == std::vector<std::size_t>{8});
  }
  // negative extents, every form: invalid_argument naming the tensor and the value. -2 × -4 = 8
  // would match the buffer size if the sign were dropped.
  param_set<float> ps;
  const std::string msgs[] = {
      add_error([&] { ps.add("neg", w, g, {-2, -4}); }),
      add_error([&] { ps.add("neg", w, g, std::vector<std::int64_t>{-2, -4}); }),
      add_error([&] { ps.add("neg", w.data(), g.data(), {-2, -4}); }),
      add_error([&] { ps.add("neg", w.data(), g.data(), std::array<short, 2>{-2, -4}); }),
  };
  for (const std::string& m : msgs) {
    CAPTURE(m);
    CHECK(m == "flatmin::param_set: tensor 'neg' has a negative extent -2 in its shape");
  }
  CHECK(ps.empty());
}

TEST_CASE("param_set: every add form runs the same checks, with the same message") {
  std::vector<float> w(6), g(5), w6(6), g6(6);
  param_set<float> ps;
  // value and gradient sizes differ: options, braced shape (size_t and int lists), range shape
  const std::string sizes[] = {
      add_error([&] { ps.add("t", w, g); }),
      add_error([&] { ps.add("t", w, g, {.perturb = false}); }),
      add_error([&] { ps.add("t", w, g, {rows_of(6), 1}); }),
      add_error([&] { ps.add("t", w, g, {6, 1}); }),
      add_error([&] { ps.add("t", w, g, std::vector<std::int64_t>{6}); }),
  };
  for (const std::string& m : sizes) {
    CAPTURE(m);
    CHECK(m == "flatmin::param_set: tensor 't' has 6 values but 5 gradient entries");
  }
  // a shape that does not match the buffers
  const std::string shapes[] = {
      add_error([&] { ps.add("t", w6, g6, {rows_of(2), 2}); }),
      add_error([&] { ps.add("t", w6, g6, {2, 2}); }),
      add_error([&] { ps.add("t", w6, g6, std::vector<std::size_t>{2, 2}); }),
  };
  for (const std::string& m : shapes) {
    CAPTURE(m);
    CHECK(m == "flatmin::param_set: tensor 't' has a shape that does not match its buffer size 6");
  }
  // an explicit empty shape (raw pointers: no size to fall back on; a range: said explicitly)
  CHECK(add_error([&] { ps.add("t", w6.data(), g6.data(), {}); }) ==
        "flatmin::param_set: tensor 't' has an empty shape");
  CHECK(add_error([&] { ps.add("t", w6, g6, std::vector<int>{}); }) ==
        "flatmin::param_set: tensor 't' has an empty shape");
  // a product that overflows size_t is not taken modulo 2^64 (2^63 · 2 would wrap to 0)
  const std::size_t half = std::size_t{1} << 63;
  CHECK(add_error([&] { ps.add("t", w6.data(), g6.data(), {half, 2}); }) ==
        "flatmin::param_set: tensor 't' has a shape whose product overflows size_t");
  // aliasing and null pointers through the buffer forms too
  CHECK(add_error([&] { ps.add("t", w6, w6, {6}); }) ==
        "flatmin::param_set: tensor 't' uses the same memory for value and gradient");
  CHECK(ps.empty());
  ps.add("t", w6, g6, {3, 2});
  CHECK(add_error([&] { ps.add("t", w6.data() + 0, g6.data(), {6}); }) ==
        "flatmin::param_set: duplicate tensor name 't'");
}
