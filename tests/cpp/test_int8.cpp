// C++ test of the native int8 ops through the dispatcher: exact int32 accumulation and the fused
// epilogue against a naive loop, on odd shapes and the full int8 range.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <tuple>

namespace {

int failures = 0;

void expect(bool ok, const char* what, int64_t M, int64_t N, int64_t K) {
  if (!ok) {
    std::fprintf(stderr, "FAILED %s at M=%lld N=%lld K=%lld\n", what, (long long)M, (long long)N, (long long)K);
    ++failures;
  }
}

at::Tensor int8_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& sa, const at::Tensor& sb,
                   const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pycompress_C::int8_mm", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, at::ScalarType)>();
  return op.call(a, b, sa, sb, bias, out_dtype);
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pycompress_C::quantize_per_token", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&)>();
  return op.call(x);
}

void check_mm(int64_t M, int64_t N, int64_t K) {
  auto a = at::randint(-128, 128, {M, K}, at::kChar);
  auto b = at::randint(-128, 128, {N, K}, at::kChar);
  auto sa = at::rand({M});
  auto sb = at::rand({N});
  auto bias = at::randn({N});
  auto unit = int8_mm(a, b, at::ones({M}), at::ones({N}), std::nullopt, at::kFloat);
  auto out = int8_mm(a, b, sa, sb, bias, at::kFloat);
  auto pa = a.data_ptr<int8_t>();
  auto pb = b.data_ptr<int8_t>();
  bool exact = true, close = true;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += int32_t(pa[m * K + k]) * int32_t(pb[n * K + k]);
      exact &= unit[m][n].item<float>() == float(acc);
      float want = float(acc) * sa[m].item<float>() * sb[n].item<float>() + bias[n].item<float>();
      close &= std::fabs(out[m][n].item<float>() - want) <= 1e-5f * (1.0f + std::fabs(want));
    }
  }
  expect(exact, "int8_mm exact accumulation", M, N, K);
  expect(close, "int8_mm fused epilogue", M, N, K);
}

void check_quantize(int64_t M, int64_t K) {
  auto x = at::randn({M, K}) * 3.0;
  auto [q, scale] = quantize_per_token(x);
  for (int64_t m = 0; m < M; ++m) {
    float amax = x[m].abs().max().item<float>();
    float inv = 127.0f / amax;
    bool ok = scale[m].item<float>() == amax / 127.0f;
    for (int64_t k = 0; k < K; ++k) {
      float v = std::nearbyint(x[m][k].item<float>() * inv);
      v = std::fmin(127.0f, std::fmax(-127.0f, v));
      ok &= q[m][k].item<int8_t>() == int8_t(v);
    }
    expect(ok, "quantize_per_token row", M, 0, K);
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{1, 1, 1}, {3, 5, 7}, {17, 33, 65}, {9, 40, 300}}) {
    check_mm(M, N, K);
  }
  check_quantize(5, 100);
  check_quantize(1, 3);
  if (failures) {
    std::fprintf(stderr, "%d checks failed\n", failures);
    return 1;
  }
  std::printf("int8 C++ tests passed\n");
  return 0;
}
