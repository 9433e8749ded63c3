package server

import (
	"context"
	"strings"

	"connectrpc.com/connect"

	hyperv1 "github.com/hypervm/hyper/api/hyper/v1"
	"github.com/hypervm/hyper/internal/ids"
	"github.com/hypervm/hyper/internal/store"
)

// Images loads and deletes images: it owns both the base disk files and
// their rows, so the two never disagree.
type Images interface {
	// Load pulls ref and records it, reporting progress as it goes.
	Load(ctx context.Context, ref, label string, progress func(*hyperv1.LoadProgress)) (store.Image, error)
	// Delete removes the image's row and base disk; it fails with
	// store.ErrInUse while VMs or layers use it.
	Delete(ctx context.Context, id string) error
}

func (s *Server) LoadImage(ctx context.Context, req *connect.Request[hyperv1.LoadImageRequest], stream *connect.ServerStream[hyperv1.LoadImageResponse]) error {
	ref := strings.TrimSpace(req.Msg.GetRef())
	if ref == "" {
		return invalid("ref", "required (a registry reference, oci:<dir>[:tag] or docker-archive:<file>)")
	}
	if s.images == nil {
		return unimplemented("LoadImage", "images, issue #4")
	}
	var sendErr error
	progress := func(p *hyperv1.LoadProgress) {
		if sendErr == nil {
			sendErr = stream.Send(&hyperv1.LoadImageResponse{Event: &hyperv1.LoadImageResponse_Progress{Progress: p}})
		}
	}
	im, err := s.images.Load(ctx, ref, req.Msg.GetLabel(), progress)
	if err != nil {
		s.log.InfoContext(ctx, "load image failed", "op", "LoadImage", "ref", ref, "error", err)
		return apiError(err)
	}
	if sendErr != nil {
		return apiError(sendErr)
	}
	return stream.Send(&hyperv1.LoadImageResponse{Event: &hyperv1.LoadImageResponse_Image{Image: imageToProto(im)}})
}

func (s *Server) GetImage(ctx context.Context, req *connect.Request[hyperv1.GetImageRequest]) (*connect.Response[hyperv1.Image], error) {
	id, err := imageID(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	im, err := s.store.GetImage(ctx, id)
	if err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(imageToProto(im)), nil
}

func (s *Server) ListImages(ctx context.Context, _ *connect.Request[hyperv1.ListImagesRequest]) (*connect.Response[hyperv1.ListImagesResponse], error) {
	images, err := s.store.ListImages(ctx)
	if err != nil {
		return nil, apiError(err)
	}
	out := &hyperv1.ListImagesResponse{}
	for _, im := range images {
		out.Images = append(out.Images, imageToProto(im))
	}
	return connect.NewResponse(out), nil
}

func (s *Server) DeleteImage(ctx context.Context, req *connect.Request[hyperv1.DeleteImageRequest]) (*connect.Response[hyperv1.DeleteImageResponse], error) {
	id, err := imageID(req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	if s.images == nil {
		return nil, unimplemented("DeleteImage", "images, issue #4")
	}
	if err := s.images.Delete(ctx, id); err != nil {
		return nil, apiError(err)
	}
	return connect.NewResponse(&hyperv1.DeleteImageResponse{}), nil
}

// imageID accepts an image id with or without a "sha256:" prefix.
func imageID(s string) (string, error) {
	id := strings.TrimPrefix(s, "sha256:")
	if !ids.IsImage(id) {
		return "", invalid("id", "%q is not an image id (want 64 lowercase hex characters)", s)
	}
	return id, nil
}
