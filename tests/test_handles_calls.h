/* The entry points of duquant.h that take a handle, one line per handle argument:
 * ENTRY(function, id, "argument as the log names it", expected type, made type + 1 or 0,
 *       the call with h in that argument). Included twice by test_handles.c. */
/* clang-format off */
ENTRY(dq_calib_create, ctx, "ctx", T_CONTEXT, T_CALIB + 1, dq_calib_create(h, NULL, COLS, OUT))
ENTRY(dq_rotation_create, ctx, "ctx", T_CONTEXT, T_ROTATION + 1,
      dq_rotation_create(h, NULL, acts, TOKENS, COLS, COLS, OUT))
ENTRY(dq_rotation_from_matrices, ctx, "ctx", T_CONTEXT, T_ROTATION + 1,
      dq_rotation_from_matrices(h, COLS, 2, 0, identity2, 4, OUT))
ENTRY(dq_rotation_refine, ctx, "ctx", T_CONTEXT, T_ROTATION + 1,
      dq_rotation_refine(h, NULL, L(T_ROTATION), acts, TOKENS, COLS, COLS, OUT))
ENTRY(dq_rotation_refine, start, "start", T_ROTATION, T_ROTATION + 1,
      dq_rotation_refine(CTX, NULL, h, acts, TOKENS, COLS, COLS, OUT))
ENTRY(dq_plan_build, ctx, "ctx", T_CONTEXT, T_PLAN + 1,
      dq_plan_build(h, NULL, L(T_CALIB), wmax, COLS, OUT))
ENTRY(dq_plan_build, calib, "calib", T_CALIB, T_PLAN + 1,
      dq_plan_build(CTX, NULL, h, wmax, COLS, OUT))
ENTRY(dq_plan_build_from_sample, ctx, "ctx", T_CONTEXT, T_PLAN + 1,
      dq_plan_build_from_sample(h, NULL, wmax, acts, TOKENS, COLS, COLS, wmax, OUT))
ENTRY(dq_plan_assemble, ctx, "ctx", T_CONTEXT, T_PLAN + 1,
      dq_plan_assemble(h, COLS, NULL, 0, NULL, NULL, OUT))
ENTRY(dq_plan_assemble, rotations, "rotations[0]", T_ROTATION, T_PLAN + 1,
      dq_plan_assemble(CTX, COLS, NULL, 1, (const dq_rotation *const[]){h}, NULL, OUT))
ENTRY(dq_qmatrix_pack, ctx, "ctx", T_CONTEXT, T_QMATRIX + 1,
      dq_qmatrix_pack(h, NULL, weights, ROWS, COLS, COLS, NULL, NULL, OUT))
ENTRY(dq_qmatrix_pack_clipped, ctx, "ctx", T_CONTEXT, T_QMATRIX + 1,
      dq_qmatrix_pack_clipped(h, NULL, weights, ROWS, COLS, COLS, NULL, NULL, 0, OUT))
ENTRY(dq_qmatrix_pack_transformed, ctx, "ctx", T_CONTEXT, T_QMATRIX + 1,
      dq_qmatrix_pack_transformed(h, NULL, L(T_PLAN), weights, ROWS, COLS, COLS, NULL, NULL, OUT))
ENTRY(dq_qmatrix_pack_transformed, plan, "plan", T_PLAN, T_QMATRIX + 1,
      dq_qmatrix_pack_transformed(CTX, NULL, h, weights, ROWS, COLS, COLS, NULL, NULL, OUT))
ENTRY(dq_hessian_create, ctx, "ctx", T_CONTEXT, T_HESSIAN + 1,
      dq_hessian_create(h, NULL, COLS, OUT))
ENTRY(dq_hessian_create, plan, "plan", T_PLAN, T_HESSIAN + 1,
      dq_hessian_create(CTX, h, COLS, OUT))
ENTRY(dq_gptq_pack, ctx, "ctx", T_CONTEXT, T_QMATRIX + 1,
      dq_gptq_pack(h, NULL, NULL, L(T_HESSIAN), weights, ROWS, COLS, COLS, NULL, NULL, 0, OUT))
ENTRY(dq_gptq_pack, h, "h", T_HESSIAN, T_QMATRIX + 1,
      dq_gptq_pack(CTX, NULL, NULL, h, weights, ROWS, COLS, COLS, NULL, NULL, 0, OUT))
ENTRY(dq_lwc_create, ctx, "ctx", T_CONTEXT, T_LWC + 1,
      dq_lwc_create(h, NULL, NULL, weights, ROWS, COLS, COLS, acts, TOKENS, COLS, OUT))
ENTRY(dq_linear_create, ctx, "ctx", T_CONTEXT, T_LINEAR + 1,
      dq_linear_create(h, NULL, NULL, L(T_QMATRIX), NULL, OUT))
ENTRY(dq_linear_create, plan, "plan", T_PLAN, T_LINEAR + 1,
      dq_linear_create(CTX, NULL, h, L(T_QMATRIX), NULL, OUT))
ENTRY(dq_linear_create, weights, "weights", T_QMATRIX, T_LINEAR + 1,
      dq_linear_create(CTX, NULL, NULL, h, NULL, OUT))
ENTRY(dq_linear_create_like, ctx, "ctx", T_CONTEXT, T_LINEAR + 1,
      dq_linear_create_like(h, NULL, L(T_LINEAR), OUT))
ENTRY(dq_linear_create_like, src, "src", T_LINEAR, T_LINEAR + 1,
      dq_linear_create_like(CTX, NULL, h, OUT))
ENTRY(dq_file_writer_create, ctx, "ctx", T_CONTEXT, T_WRITER + 1, dq_file_writer_create(h, OUT))
ENTRY(dq_file_reader_open, ctx, "ctx", T_CONTEXT, T_READER + 1,
      dq_file_reader_open(h, NULL, "/nonexistent-folder/handles.dq", OUT))
ENTRY(dq_file_reader_from_buffer, ctx, "ctx", T_CONTEXT, T_READER + 1,
      dq_file_reader_from_buffer(h, NULL, live.file, live.file_size, OUT))
ENTRY(dq_file_reader_get_plan, ctx, "ctx", T_CONTEXT, T_PLAN + 1,
      dq_file_reader_get_plan(L(T_READER), h, "p", OUT))
ENTRY(dq_file_reader_get_plan, r, "r", T_READER, T_PLAN + 1,
      dq_file_reader_get_plan(h, CTX, "p", OUT))
ENTRY(dq_file_reader_get_qmatrix, ctx, "ctx", T_CONTEXT, T_QMATRIX + 1,
      dq_file_reader_get_qmatrix(L(T_READER), h, "q", OUT))
ENTRY(dq_file_reader_get_qmatrix, r, "r", T_READER, T_QMATRIX + 1,
      dq_file_reader_get_qmatrix(h, CTX, "q", OUT))
ENTRY(dq_file_reader_get_linear, ctx, "ctx", T_CONTEXT, T_LINEAR + 1,
      dq_file_reader_get_linear(L(T_READER), h, "l", NULL, OUT))
ENTRY(dq_file_reader_get_linear, r, "r", T_READER, T_LINEAR + 1,
      dq_file_reader_get_linear(h, CTX, "l", NULL, OUT))
ENTRY(dq_file_reader_get_linear, plan, "plan", T_PLAN, T_LINEAR + 1,
      dq_file_reader_get_linear(L(T_READER), CTX, "l", h, OUT))

ENTRY(dq_calib_observe, cal, "cal", T_CALIB, 0, dq_calib_observe(h, acts, TOKENS, COLS, COLS))
ENTRY(dq_calib_merge, dst, "dst", T_CALIB, 0, dq_calib_merge(h, L(T_CALIB)))
ENTRY(dq_calib_merge, src, "src", T_CALIB, 0, dq_calib_merge(L(T_CALIB), h))
ENTRY(dq_calib_tokens, cal, "cal", T_CALIB, 0, dq_calib_tokens(h, area.i64))
ENTRY(dq_calib_absmax, cal, "cal", T_CALIB, 0, dq_calib_absmax(h, area.f, COLS))
ENTRY(dq_calib_minmax, cal, "cal", T_CALIB, 0, dq_calib_minmax(h, area.f, area.f + COLS, COLS))
ENTRY(dq_calib_sample, cal, "cal", T_CALIB, 0, dq_calib_sample(h, area.f, COLS, area.i64))

ENTRY(dq_rotation_layout, r, "r", T_ROTATION, 0,
      dq_rotation_layout(h, area.i64, area.i32, area.i64 + 1, area.i64 + 2))
ENTRY(dq_rotation_block, r, "r", T_ROTATION, 0, dq_rotation_block(h, 0, area.i32, area.i64))
ENTRY(dq_rotation_matrix, r, "r", T_ROTATION, 0, dq_rotation_matrix(h, 0, area.f, 2, area.i32))
ENTRY(dq_rotation_trace, r, "r", T_ROTATION, 0,
      dq_rotation_trace(h, 0, area.i32, area.i32 + 1, area.i64, area.i32 + 2, area.f, 1))
ENTRY(dq_rotation_apply, r, "r", T_ROTATION, 0, dq_rotation_apply(h, area.f, 2, COLS, COLS))

ENTRY(dq_plan_width, pl, "pl", T_PLAN, 0, dq_plan_width(h, area.i64))
ENTRY(dq_plan_workspace_size, pl, "pl", T_PLAN, 0, dq_plan_workspace_size(h, 2, area.sz))
ENTRY(dq_plan_apply_act, pl, "pl", T_PLAN, 0,
      dq_plan_apply_act(h, area.f, 2, COLS, COLS, area.work, sizeof area.work))
ENTRY(dq_plan_apply_act_to, pl, "pl", T_PLAN, 0,
      dq_plan_apply_act_to(h, acts, 2, COLS, COLS, area.f, COLS, area.work, sizeof area.work))
ENTRY(dq_plan_transform_weight, pl, "pl", T_PLAN, 0,
      dq_plan_transform_weight(h, area.f, ROWS, COLS, COLS))
ENTRY(dq_plan_layout, pl, "pl", T_PLAN, 0, dq_plan_layout(h, area.i32, area.i32 + 1))
ENTRY(dq_plan_smooth_scales, pl, "pl", T_PLAN, 0, dq_plan_smooth_scales(h, area.f, COLS))
ENTRY(dq_plan_rotation, pl, "pl", T_PLAN, 0,
      dq_plan_rotation(h, 0, (const dq_rotation **)(void *)area.ptr))
ENTRY(dq_plan_permutation, pl, "pl", T_PLAN, 0, dq_plan_permutation(h, 0, area.i64, COLS))
ENTRY(dq_plan_fingerprint, pl, "pl", T_PLAN, 0, dq_plan_fingerprint(h, &area.u64))
ENTRY(dq_file_writer_add_plan, pl, "pl", T_PLAN, 0,
      dq_file_writer_add_plan(L(T_WRITER), "p", h))

ENTRY(dq_qmatrix_layout, q, "q", T_QMATRIX, 0,
      dq_qmatrix_layout(h, area.i64, area.i64 + 1, area.i32, area.i32 + 1, area.i32 + 2,
                        area.i64 + 2, area.sz))
ENTRY(dq_qmatrix_view, q, "q", T_QMATRIX, 0,
      dq_qmatrix_view(h, (const uint8_t **)(void *)&area.ptr[0], area.sz,
                      (const float **)(void *)&area.ptr[1], (const float **)(void *)&area.ptr[2]))
ENTRY(dq_qmatrix_unpack_codes, q, "q", T_QMATRIX, 0, dq_qmatrix_unpack_codes(h, area.i32, COLS))
ENTRY(dq_qmatrix_dequantize, q, "q", T_QMATRIX, 0, dq_qmatrix_dequantize(h, area.f, COLS))
ENTRY(dq_qmatrix_plan_fingerprint, q, "q", T_QMATRIX, 0,
      dq_qmatrix_plan_fingerprint(h, &area.u64))
ENTRY(dq_file_writer_add_qmatrix, q, "q", T_QMATRIX, 0,
      dq_file_writer_add_qmatrix(L(T_WRITER), "q", h))
ENTRY(dq_file_writer_add_linear, weights, "weights", T_QMATRIX, 0,
      dq_file_writer_add_linear(L(T_WRITER), "l", NULL, NULL, h, NULL))

ENTRY(dq_hessian_observe, h, "h", T_HESSIAN, 0,
      dq_hessian_observe(h, acts, TOKENS, COLS, COLS))
ENTRY(dq_hessian_merge, dst, "dst", T_HESSIAN, 0, dq_hessian_merge(h, L(T_HESSIAN)))
ENTRY(dq_hessian_merge, src, "src", T_HESSIAN, 0, dq_hessian_merge(L(T_HESSIAN), h))
ENTRY(dq_hessian_tokens, h, "h", T_HESSIAN, 0, dq_hessian_tokens(h, area.i64))
ENTRY(dq_hessian_matrix, h, "h", T_HESSIAN, 0, dq_hessian_matrix(h, area.d, COLS))
ENTRY(dq_lwc_train, l, "l", T_LWC, 0, dq_lwc_train(h, area.f))
ENTRY(dq_lwc_loss, l, "l", T_LWC, 0, dq_lwc_loss(h, area.f, NULL, NULL, 0))
ENTRY(dq_lwc_layout, l, "l", T_LWC, 0, dq_lwc_layout(h, area.i64, area.i32))
ENTRY(dq_lwc_get_params, l, "l", T_LWC, 0, dq_lwc_get_params(h, area.f, area.f + 64, ROWS))
ENTRY(dq_lwc_set_params, l, "l", T_LWC, 0, dq_lwc_set_params(h, wmax, wmax, ROWS))
ENTRY(dq_lwc_best, l, "l", T_LWC, 0,
      dq_lwc_best(h, area.f, area.f + 64, ROWS, area.f + 128))
ENTRY(dq_lwc_factors, l, "l", T_LWC, 0, dq_lwc_factors(h, area.f, area.f + 64, ROWS))

ENTRY(dq_linear_layout, lin, "lin", T_LINEAR, 0, dq_linear_layout(h, area.i64, area.i64 + 1))
ENTRY(dq_linear_workspace_size, lin, "lin", T_LINEAR, 0,
      dq_linear_workspace_size(h, 2, area.sz))
ENTRY(dq_linear_forward, lin, "lin", T_LINEAR, 0,
      dq_linear_forward(h, acts, 2, COLS, COLS, area.f, ROWS, area.work, sizeof area.work))
ENTRY(dq_linear_group_workspace_size, layers, "layers[0]", T_LINEAR, 0,
      dq_linear_group_workspace_size((const dq_linear *const[]){h}, 1, 2, area.sz))
ENTRY(dq_linear_forward_group, layers, "layers[0]", T_LINEAR, 0,
      dq_linear_forward_group((const dq_linear *const[]){h}, 1, acts, 2, COLS, COLS,
                              (float *const[]){area.f}, (const int64_t[]){ROWS}, 1, area.work,
                              sizeof area.work))
ENTRY(dq_file_writer_add_linear_layer, lin, "lin", T_LINEAR, 0,
      dq_file_writer_add_linear_layer(L(T_WRITER), "ll", h, NULL))

ENTRY(dq_file_writer_add_metadata, w, "w", T_WRITER, 0, dq_file_writer_add_metadata(h, "k2", "v"))
ENTRY(dq_file_writer_add_tensor_f32, w, "w", T_WRITER, 0,
      dq_file_writer_add_tensor_f32(h, "t", weights, 2, (const int64_t[]){ROWS, COLS}))
ENTRY(dq_file_writer_add_plan, w, "w", T_WRITER, 0, dq_file_writer_add_plan(h, "p", L(T_PLAN)))
ENTRY(dq_file_writer_add_qmatrix, w, "w", T_WRITER, 0,
      dq_file_writer_add_qmatrix(h, "q", L(T_QMATRIX)))
ENTRY(dq_file_writer_to_buffer, w, "w", T_WRITER, 0,
      dq_file_writer_to_buffer(h, area.work, sizeof area.work, area.sz))
ENTRY(dq_file_writer_save, w, "w", T_WRITER, 0,
      dq_file_writer_save(h, "/nonexistent-folder/handles.dq"))
ENTRY(dq_file_writer_spool, w, "w", T_WRITER, 0,
      dq_file_writer_spool(h, "/nonexistent-folder/handles.dq"))
ENTRY(dq_file_writer_add_linear, w, "w", T_WRITER, 0,
      dq_file_writer_add_linear(h, "l", NULL, NULL, L(T_QMATRIX), NULL))
ENTRY(dq_file_writer_add_linear_layer, w, "w", T_WRITER, 0,
      dq_file_writer_add_linear_layer(h, "ll", L(T_LINEAR), NULL))

ENTRY(dq_file_reader_count, r, "r", T_READER, 0, dq_file_reader_count(h, area.i64, area.i64 + 1))
ENTRY(dq_file_reader_tensor_name, r, "r", T_READER, 0,
      dq_file_reader_tensor_name(h, 0, area.str, sizeof area.str, area.sz))
ENTRY(dq_file_reader_metadata_key, r, "r", T_READER, 0,
      dq_file_reader_metadata_key(h, 0, area.str, sizeof area.str, area.sz))
ENTRY(dq_file_reader_metadata, r, "r", T_READER, 0,
      dq_file_reader_metadata(h, "k", area.str, sizeof area.str, area.sz))
ENTRY(dq_file_reader_tensor_info, r, "r", T_READER, 0,
      dq_file_reader_tensor_info(h, "w", area.i32, area.i32 + 1, area.i64))
ENTRY(dq_file_reader_get_tensor_f32, r, "r", T_READER, 0,
      dq_file_reader_get_tensor_f32(h, "w", area.f, ROWS * COLS))
/* clang-format on */
